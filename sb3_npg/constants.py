"""
The names and defaults that several layers of the package share: the constructor's checks
(:mod:`sb3_npg.hyperparameters`), the Fisher operators (:mod:`sb3_npg.fisher`), ``learn()``'s thread count
(:mod:`sb3_npg.base`), the RL Zoo bridge and the benchmarks. A leaf: it imports nothing of the package, so that
whoever needs one of these names does not stand above the mathematics that uses it.
"""

#: The Fisher-vector product backends, the values of NPG's ``fisher`` argument (the default first)
FISHER_BACKENDS = ("gauss_newton", "hessian", "empirical")
#: How the step along the natural gradient is scaled, the values of ``step_length`` (the default first)
STEP_LENGTHS = ("quadratic", "exact")
#: The preconditioners of the conjugate-gradient solve, the values of ``preconditioner`` (the default first;
#: ``"kfac"``: Kronecker-factored curvature, :mod:`sb3_npg.kfac`)
PRECONDITIONERS = (None, "kfac")
#: torch's intra-op thread count in ``learn()`` when ``num_threads`` is ``None``: NPG's tensors are small, and with
#: more threads each operation waits for every thread (measured in docs/performance.md, "Threads"); only large batch
#: products may run at the caller's count, when timed faster (:mod:`sb3_npg.fast.threads`)
DEFAULT_NUM_THREADS = 1
