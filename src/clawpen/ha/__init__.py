"""Primary/backup failover of bots across hosts, arbitrated by etcd (issue 18)."""
