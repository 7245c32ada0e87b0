"""Model-level analysis on demand: a model and an :class:`~gradlens.analysis.objective.Objective`
(the loss on fixed batches). The public functions (Hessian spectra, loss landscapes, neural
collapse, the ghost radius) and what the probes call.

Modules: ``objective``, ``hessian`` (HVP operators, spectra), ``landscape`` (directions,
evaluation, slices), ``collapse``, ``softmax``. Pure tensor math is in ``gradlens.functional``.
"""
