"""``clawpen audit``: the deployment's risk picture in one report (host, spec, dependencies,
logins, configuration), each finding with its severity, why it matters and how to fix it.

Every check reads a root folder (``/`` for this host; another root for a mounted image or a
test's prepared Debian root) and returns :class:`~clawpen.assess.model.AuditFinding` records.
"""
