"""The method specs (:class:`attnctl.spec.MethodSpec`), one module per method; the registry that lists them is
:data:`attnctl.batch.methods.METHODS`. Each module imports only :mod:`attnctl.spec` and :mod:`attnctl.checks` at
the top, so reading the specs (``attnctl generate --help``) loads no torch; the pipeline is imported when a run
needs it."""
