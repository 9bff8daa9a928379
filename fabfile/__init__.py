"""opsfab: deploy docker-compose applications to a Docker host over SSH, safely.

Fabric finds this package as the fabfile; ``fabfile.api`` is the entry point for
Python runbooks.
"""

from invoke import Collection

from . import tasks, tasks_ops, tasks_server

ns = Collection(
    tasks.deploy,
    tasks.rollback,
    tasks.health,
    tasks.history,
    tasks.unlock,
    tasks.render,
    tasks_ops.status,
    tasks_ops.logs,
    tasks_ops.restore,
    tasks_ops.doctor,
    tasks_ops.bootstrap,
    tasks_ops.secrets,
    tasks_ops.backups,
    tasks_server.check,
    tasks_server.ports,
    tasks_server.diff,
)
ns.add_collection(Collection("infra", tasks_server.infra_deploy, tasks_server.infra_diff))
