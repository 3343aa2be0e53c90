"""Primary/backup failover across hosts, arbitrated by etcd, with fencing (see docs/ha.md)."""
