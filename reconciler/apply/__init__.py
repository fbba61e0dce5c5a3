"""`apply`: move one VM at a time, journaled, verified, rolled back on failure, resumable.

An executor: it imports only the model, kube and itself (an import-linter contract says so).
The engine's pipeline (``reconciler.pipeline``) observes, judges and renders, and hands the
runner those stages as callables over model values (``seam.Stages``).

- ``runner``   the loop over VMs: resume journals first, then new moves, in a stable order
- ``seam``     what the engine hands in: the stages, the run's options and listener
- ``machine``  drives one VM's journal through its steps (the per-VM state machine) and holds
  the step registry, checked complete at import
- ``begin``    turns the engine's judgement of a VM into the first journal
- ``store``    reads and writes the journal on the VM (test-guarded JSON patches)
- ``read``     the objects apply acts on (VM, VMI, PVC, DataVolume, migration, pod) as typed
  values: the one place that walks their JSON
- ``vm_steps``, ``target_steps``, ``source_steps``, ``migration``, ``verify``: what each step
  does; ``claims``: who holds a claim now
- ``trust``    the checks a journal passes before it is acted on (it is untrusted input)
- ``stopped``  a move stopped before its end: the outcome and what goes on meanwhile
- ``cancel``   roll one VM's move back through its journal
- ``lease``    one runner at a time (coordination.k8s.io/v1 Lease)
- ``failpoint`` test-only crash injection at step boundaries
"""
