"""``clawpen host harden plan|apply|rollback``: the host part of the deployment practice as a
reviewable, reversible plan."""
