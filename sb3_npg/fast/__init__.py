"""
NPG's fast paths: the same numbers as the reference path, computed with less per-call overhead on SB3's small networks.

Each is chosen in one place, which falls back to the reference path for anything it does not reproduce exactly:

- :mod:`sb3_npg.fast.mlp` and :mod:`sb3_npg.fast.mlp_jacobian`: hand-derived products of SB3's MLP heads, for the
  actor's Jacobian (chosen by :func:`sb3_npg.policy_gradient.policy_jacobian`, else autograd's).
- :mod:`sb3_npg.fast.lean_forward`, :mod:`sb3_npg.fast.numpy_pass` and :mod:`sb3_npg.fast.rollout`: the lean rollout
  (chosen by :meth:`sb3_npg.npg.NPG.collect_rollouts`, else SB3's ``collect_rollouts``).
- :mod:`sb3_npg.fast.critic`: the critic's hand-derived gradients and fused Adam step (chosen by
  :func:`sb3_npg.critic.fit_critic`, else autograd and ``optimizer.step()``).

Each module's docstring names the dependency internals it rests on (feature-tested, with a public fallback) and the
equivalence tests that keep it exact.
"""
