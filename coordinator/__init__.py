"""The coordinator (a leader-elected Deployment): watches DataUploads/DataDownloads, exposes
snapshots on nodes, assigns work to agents over gRPC and owns the CR phase machine.

Pure modules (no Kubernetes, gRPC or adapter imports; an import-linter contract keeps it so):

* ``config``: ``CoordinatorConfig.from_dict(yaml_dict)``: Velero's node-agent config plus Barge's keys.
* ``model``: ``Observed`` (what one CR and its world look like now) and the ``Action`` values.
* ``decide``: ``decide(observed) -> tuple[Action, ...]``: the phase machine (docs/phase-machine.md).
* ``scheduler``: ``admit(work_items, nodes, config)``: who may be accepted / assigned this pass.
* ``exposer``: ``plan_exposure(observed)`` and ``manifests(plan)``: the objects that expose a volume.

A reconcile pass of the controller: build ``scheduler.work_item(...)`` for every cached CR, call
``scheduler.admit``; then per CR build ``Observed`` (``admitted`` from that result), call ``decide``
and execute the actions in order, stopping at the first failure.
"""
