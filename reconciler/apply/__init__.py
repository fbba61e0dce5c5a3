"""`apply`: move one VM at a time, journaled, verified, rolled back on failure, resumable.

- ``machine``  drives one VM's journal through its steps (the per-VM state machine)
- ``begin``    turns a verdict and its rendering into the first journal
- ``store``    reads and writes the journal on the VM (test-guarded JSON patches)
- ``vm_steps``, ``target_steps``, ``migration``, ``verify``: what each step does
- ``lease``    one runner at a time (coordination.k8s.io/v1 Lease)
- ``runner``   the loop over VMs: resume journals first, then new moves, in a stable order
- ``failpoint`` test-only crash injection at step boundaries
"""
