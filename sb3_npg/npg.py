"""
Natural Policy Gradient (NPG): the algorithm.

One ``train()`` call (:meth:`NPG.train`, then :meth:`NPG._natural_gradient_step`, read top to bottom like
sb3-contrib TRPO's ``train()``): the policy gradient ``g`` on the actor parameters (:mod:`sb3_npg.policy_gradient`),
``x ~ (F + damping I)^-1 g`` by conjugate gradient on a Fisher operator (:mod:`sb3_npg.fisher`), ``x^T F x``, the
step ``sqrt(2 target_kl / x^T F x) x`` (no line search on the surrogate; with ``step_length="exact"`` the scale
along ``x`` is searched until the measured KL is ``target_kl``, :mod:`sb3_npg.step_length`), the KL measured after
the step (:mod:`sb3_npg.kl`), then the critic's regression on the returns (:mod:`sb3_npg.critic`).

``learn``, the NaN/inf environment check, ``save``, ``load`` and ``set_parameters`` are shared with MaskableNPG and
RecurrentNPG in :class:`sb3_npg.base.NPGBase`; the fast paths (same numbers) are in :mod:`sb3_npg.fast`.
"""

import math
import warnings
from typing import Any, ClassVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, PyTorchObs, Schedule
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecEnv

from sb3_npg.actor_critic import critic_optimizer, has_running_statistics, split_parameters
from sb3_npg.base import NPGBase
from sb3_npg.critic import fit_critic, index_observations, upcoming_get_order
from sb3_npg.fast.lean_forward import LeanForward
from sb3_npg.fast.rollout import collect_rollouts as lean_collect_rollouts
from sb3_npg.fisher import make_fisher
from sb3_npg.hyperparameters import check_npg_hyperparameters
from sb3_npg.kfac import check_preconditioner, direction_cosine, make_preconditioner
from sb3_npg.kl import action_distribution, distribution_not_kept, mean_summed_kl
from sb3_npg.parameters import add_to_parameters_, set_parameters_along_
from sb3_npg.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_npg.policy_gradient import policy_gradient, policy_jacobian
from sb3_npg.step_length import search_step_scale

#: ``step_length="exact"``: the relative tolerance on the measured KL, and the budget of KL evaluations per update
EXACT_KL_TOLERANCE = 0.05
EXACT_MAX_KL_EVALUATIONS = 6


class NPG(NPGBase):
    """
    Natural Policy Gradient (NPG)

    Every update maximises the first-order gain ``g^T dtheta`` subject to
    ``E_s[KL(pi_old(.|s) || pi_new(.|s))] ~ target_kl`` (KL summed over action dimensions):
    ``dtheta = sqrt(2 target_kl / x^T F x) x`` with ``x ~ (F + cg_damping I)^-1 g``.
    Unlike TRPO there is no line search on the surrogate: by default the quadratic model of the KL is trusted;
    ``step_length="exact"`` rescales the step along ``x`` until the measured KL equals ``target_kl``.

    Paper: https://proceedings.neurips.cc/paper/2001/hash/4b86abe48d358ecf194c56c69108433e-Abstract.html
    (Kakade, "A Natural Policy Gradient", 2001); see also https://arxiv.org/abs/1703.02660

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate of the critic (value function), it can be a function
        of the current progress remaining (from 1 to 0). The actor has no learning rate: its step
        length is set by ``target_kl``.
    :param n_steps: The number of steps to run for each environment per update
        (i.e. rollout buffer size is n_steps * n_envs where n_envs is number of environment copies running in parallel)
    :param batch_size: Minibatch size for the critic's regression (above the rollout size ``n_steps * n_envs``,
        the whole rollout is one minibatch)
    :param gamma: Discount factor
    :param gae_lambda: Factor for trade-off of bias vs variance for Generalized Advantage Estimator
    :param cg_max_steps: Maximum number of conjugate-gradient steps (Fisher-vector products) per update
    :param cg_damping: Damping ``lambda`` in ``(F + lambda I) x = g``; it regularises the solve only
    :param target_kl: The KL divergence ``epsilon`` each update aims at, summed over action dimensions
        and averaged over states. Values like 0.01 for discrete actions, larger (0.05-0.1) for
        multi-dimensional continuous actions. It can be a function of the current progress remaining
        (from 1 to 0), like ``learning_rate``: > 0 at the start, >= 0 at the end (an update whose value is 0
        leaves the actor where it is).
    :param n_critic_updates: Number of epochs of critic regression per update
    :param normalize_advantage: Whether to normalize the advantages
    :param sub_sampling_factor: Use every ``sub_sampling_factor``-th sample of the rollout for the
        Fisher (the gradient uses all samples); see p40-42 of John Schulman's thesis
    :param fisher: The Fisher-vector product backend: ``"gauss_newton"`` (default, exact and fastest),
        ``"hessian"`` (double backprop of the KL, like TRPO) or ``"empirical"`` (outer products of the
        per-sample scores, the seed article's formula)
    :param preconditioner: The conjugate-gradient preconditioner: ``None`` (default, plain CG) or ``"kfac"``, the
        Kronecker-factored approximation of the policy's Fisher (:mod:`sb3_npg.kfac`), built once per update from
        the Fisher's batch: the same solution in fewer Fisher products. With ``cg_max_steps=1`` the direction is the
        K-FAC solve itself (ACKTR's step), its length still set by the exact ``x^T F x`` from that one product.
        ``"kfac"`` covers ``nn.Linear`` and ``nn.Conv2d`` layers and a Gaussian ``log_std`` (a ``ValueError``
        names any other actor layer at construction).
    :param log_direction_cosine: Also solve each update's system to convergence (preconditioned CG, up to 50
        products, not used for the step) and log the cosine of the step's direction to that solution as
        ``train/direction_cosine``: a diagnostic of how far a short or K-FAC solve is from the natural gradient.
    :param damped_step_size: Normalise the step by ``x^T (F + lambda I) x`` instead of ``x^T F x``.
        This is TRPO's normalisation; it under-steps (measured 0.4-0.95 ``target_kl`` on HalfCheetah, closer to
        ``target_kl`` when the curvature is large against ``cg_damping``). The MuJoCo entries of ``npg.yml`` use it.
        With ``step_length="exact"`` it only changes the scale the search starts from.
    :param step_length: How the step along ``x`` is scaled: ``"quadratic"`` (default) takes the scale
        ``sqrt(2 target_kl / x^T F x)`` at which the quadratic model of the KL equals ``target_kl``; ``"exact"``
        starts there and searches the scale at which the KL measured on the batch is within 5 % of
        ``target_kl`` (secant in log-log space, bisection as a safeguard), with at most 6 forward passes of the
        actor per update (``"quadratic"`` makes one, to measure the KL). It never ends above ``1.05 target_kl``:
        without a scale inside the tolerance it keeps the largest one below (counted in
        ``train/kl_search_failures``), and without any it leaves the actor unchanged (a skipped update).
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
        instead of action noise exploration (default: False)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE
        Default: -1 (only sample at the beginning of the rollout)
    :param rollout_buffer_class: Rollout buffer class to use. If ``None``, it will be automatically selected.
    :param rollout_buffer_kwargs: Keyword arguments to pass to the rollout buffer on creation
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: the verbosity level: 0 no output, 1 info, 2 debug
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
        Setting it to auto, the code will be run on the GPU if possible.
    :param num_threads: The number of torch intra-op threads ``learn()`` runs with (rollouts, updates and the
        callbacks called during them); the caller's ``torch.get_num_threads()`` is restored when ``learn()``
        returns or raises. ``None`` (default): 1, the fastest for SB3-sized networks on an idle machine and much
        faster when other processes share the cores; only the batch products of large MLP heads (256x256 and up,
        on a batch of thousands of samples or the critic's minibatches) run at the caller's count when timed faster
        (:mod:`sb3_npg.fast.threads`), which makes two seeded runs with such a network differ by float rounding;
        SB3-sized networks are unaffected. An int: that many threads for everything, and a seeded run is
        bit-reproducible (``num_threads=1`` for large networks too). Set it (e.g. to the number of cores) for
        other large networks (``CnnPolicy``) on an otherwise idle machine. ``predict()`` runs with the caller's
        setting.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    policy: ActorCriticPolicy
    #: The action spaces the algorithm takes (checked on the environment)
    supported_action_spaces: ClassVar[tuple[type[spaces.Space], ...]] = (
        spaces.Box,
        spaces.Discrete,
        spaces.MultiDiscrete,
        spaces.MultiBinary,
    )

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-3,
        n_steps: int = 2048,
        batch_size: int = 128,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        cg_max_steps: int = 15,
        cg_damping: float = 0.1,
        target_kl: float | Schedule = 0.01,
        n_critic_updates: int = 10,
        normalize_advantage: bool = True,
        sub_sampling_factor: int = 1,
        fisher: str = "gauss_newton",
        preconditioner: str | None = None,
        log_direction_cosine: bool = False,
        damped_step_size: bool = False,
        step_length: str = "quadratic",
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        num_threads: int | None = None,
        _init_setup_model: bool = True,
    ):
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=0.0,  # no entropy bonus: the actor step is the natural gradient of the advantage objective
            vf_coef=0.0,  # the critic is fitted separately
            max_grad_norm=0.0,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            device=device,
            seed=seed,
            _init_setup_model=False,
            supported_action_spaces=self.supported_action_spaces,
        )
        self.batch_size = batch_size
        self.cg_max_steps = cg_max_steps
        self.cg_damping = cg_damping
        self.target_kl = target_kl
        self.n_critic_updates = n_critic_updates
        self.normalize_advantage = normalize_advantage
        self.sub_sampling_factor = sub_sampling_factor
        self.fisher = fisher
        self.preconditioner = preconditioner
        self.log_direction_cosine = log_direction_cosine
        self.damped_step_size = damped_step_size
        self.step_length = step_length
        self.num_threads = num_threads
        self.skipped_updates = 0
        self.kl_search_failures = 0
        self._add_finite_check()
        self._check_hyperparameters()

        if _init_setup_model:
            self._setup_model()

    def _check_hyperparameters(self) -> None:
        """Raise ``ValueError`` naming the first argument outside its allowed range (:mod:`sb3_npg.hyperparameters`)."""
        n_envs = None if self.env is None else self.env.num_envs
        check_npg_hyperparameters(vars(self), n_envs, self.normalize_advantage)
        if n_envs is not None:
            self._warn_truncated_minibatch(self.n_steps * n_envs)

    def _setup_model(self) -> None:
        super()._setup_model()
        self._setup_actor_critic()

    def _setup_actor_critic(self) -> None:
        """Split the policy into actor and critic parameters and give the critic its own optimiser."""
        self.actor_parameters, critic_parameters = split_parameters(self.policy, self._sample_distribution)
        check_preconditioner(self.preconditioner, self.policy, self.actor_parameters)  # K-FAC covers every layer
        # The critic optimiser holds the value parameters only: the actor (log_std and a shared features
        # extractor included) is moved by the natural-gradient step alone.
        self.policy.optimizer = critic_optimizer(self.policy, critic_parameters, self.lr_schedule(1))
        if self.policy.share_features_extractor and any(True for _ in self.policy.features_extractor.parameters()):
            warnings.warn(
                "NPG's critic does not train a shared features extractor (it is an actor parameter, moved by the "
                "natural-gradient step only), so the value function can only fit its head on the actor's features. "
                "Pass policy_kwargs=dict(share_features_extractor=False) to give the critic its own.",
                UserWarning,
                stacklevel=4,
            )

    def _sample_distribution(self) -> Distribution:
        """The policy's action distribution on one sampled observation (how the actor parameters are found)."""
        observation, _ = self.policy.obs_to_tensor(self.observation_space.sample())
        return self.policy.get_distribution(observation)

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """
        Collect a rollout (see SB3's ``OnPolicyAlgorithm.collect_rollouts``): with the lean forward pass of
        :mod:`sb3_npg.fast.rollout` for the policies it reproduces (same random draws; the same buffer bit for bit, or to
        float32 rounding for diagonal Gaussian MLPs), else SB3's.
        """
        forward = LeanForward.for_policy(self.policy)
        if forward is None:
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        return lean_collect_rollouts(self, env, callback, rollout_buffer, n_rollout_steps, forward)

    def train(self) -> None:
        """
        Update policy using the currently gathered rollout buffer.
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)

        batch_rows = upcoming_get_order(self.rollout_buffer)  # the buffer's shuffle, for the critic's minibatches
        rollout_data = next(self.rollout_buffer.get(batch_size=None))
        observations = rollout_data.observations
        actions = rollout_data.actions
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.long().flatten()

        # The natural-gradient step on the actor (gradient, solve, x^T F x, scale, apply, measured KL)
        self._policy_step(observations, actions, rollout_data.advantages, self._action_masks(rollout_data))
        # 7. Critic: n_critic_updates epochs of regression on the returns (sb3_npg.critic)
        value_loss = self._fit_critic(observations, rollout_data.returns, batch_rows)
        self._record_update(value_loss)

    def _record_update(self, value_loss: float) -> None:
        """Count the update and log the critic's fit and the policy's spread."""
        self._n_updates += 1
        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        self.logger.record("train/value_loss", value_loss)
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/skipped_updates", self.skipped_updates)

    def _action_masks(self, rollout_data: Any) -> th.Tensor | None:
        """The action masks stored with the samples of ``rollout_data`` (``None``: no masking; see MaskableNPG)."""
        return None

    def _policy_step(
        self,
        observations: PyTorchObs,
        actions: th.Tensor,
        advantages: th.Tensor,
        action_masks: th.Tensor | None = None,
        batch_policy: Any = None,
    ) -> None:
        """
        The natural-gradient step on the actor parameters, with its logs.

        The step itself runs in evaluation mode (see :meth:`_natural_gradient_step`). Then, in training mode, a policy
        with running statistics (``BatchNorm``) makes one forward pass of its actor over the batch, without gradients,
        which updates the statistics of the actor's layers once per update. The policy is left in training mode, for
        the critic's regression (as SB3's ``train()``), and does not keep the step's distributions.

        :param action_masks: the masks of the samples (maskable policies): the gradient, every Fisher product and
            the KL after the step use the distribution they mask, the same for the old and the new policy
        :param batch_policy: what gives the action distribution of the batch through
            ``get_distribution(observations, action_masks=...)``, one row per sample of ``actions``, for the gradient,
            every Fisher product and the KL after the step (default: the policy; see RecurrentNPG for sequences)
        """
        policy = self.policy if batch_policy is None else batch_policy
        with distribution_not_kept(self.policy):
            self.policy.set_training_mode(False)
            try:
                self._natural_gradient_step(observations, actions, advantages, action_masks, policy)
            finally:
                self.policy.set_training_mode(True)
            if has_running_statistics(self.policy):
                with th.no_grad():  # train mode: updates the running statistics of the actor's layers, once
                    action_distribution(policy, observations, action_masks)

    def _natural_gradient_step(
        self,
        observations: PyTorchObs,
        actions: th.Tensor,
        advantages: th.Tensor,
        action_masks: th.Tensor | None,
        policy: Any,
    ) -> None:
        """
        :meth:`_policy_step`'s natural-gradient step, the policy in evaluation mode: the gradient, every Fisher
        product and the KL after the step are those of the deterministic function that collected the rollout and acts
        in ``predict`` (``Dropout`` off, ``BatchNorm`` on its running statistics, which these passes do not change).

        :param policy: what gives the batch's distribution (see :meth:`_policy_step`)
        """
        target_kl = self._current_target_kl()
        self.logger.record("train/target_kl", target_kl)
        if not (math.isfinite(target_kl) and target_kl >= 0):
            self._skip_update(f"target_kl is {target_kl} (its schedule must give a number >= 0)")
            return
        if advantages.numel() > 1:  # their scale before normalisation, which the normalised step does not see
            self.logger.record("train/advantage_std", advantages.std().item())
        if self.normalize_advantage:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

        # 1. Gradient: one forward pass at theta_old gives the old distribution, g and (without sub-sampling)
        # the Jacobian the Fisher products use (sb3_npg.policy_gradient)
        jacobian = policy_jacobian(policy, self.actor_parameters, observations, action_masks)
        old = jacobian.distribution
        gradient = policy_gradient(jacobian, actions, advantages)

        # 2. Solve (F + lambda I) x = g by conjugate gradient on the chosen Fisher backend (sb3_npg.fisher)
        fisher_index = slice(None, None, self.sub_sampling_factor)
        fisher_observations = index_observations(observations, fisher_index)
        fisher_masks = None if action_masks is None else action_masks[fisher_index]
        fisher = make_fisher(
            self.fisher,
            policy,
            self.actor_parameters,
            fisher_observations,
            actions[fisher_index],
            self.cg_damping,
            jacobian=jacobian if self.sub_sampling_factor == 1 else None,
            action_masks=fisher_masks,
        )
        del jacobian  # kept by the Fisher if it uses it, freed otherwise
        # preconditioner="kfac": K-FAC's factors on the Fisher's batch (sb3_npg.kfac)
        preconditioner = make_preconditioner(
            self.preconditioner, self.policy, self.actor_parameters, fisher_observations, self.cg_damping, fisher_masks, policy
        )
        direction, residual = fisher.solve(gradient, self.cg_max_steps, preconditioner)
        if self.log_direction_cosine:
            self.logger.record("train/direction_cosine", direction_cosine(fisher, gradient, direction, preconditioner))
        # 3. x^T F x from the solve's residual, without another product (undamped unless damped_step_size)
        damped_quadratic = direction @ (gradient - residual)  # x^T (F + lambda I) x
        quadratic = damped_quadratic if self.damped_step_size else damped_quadratic - self.cg_damping * direction @ direction
        del fisher  # frees its graph and caches before the step

        self.logger.record("train/policy_gradient_norm", gradient.norm().item())
        self.logger.record("train/cg_residual", residual.norm().item())
        self.logger.record("train/xFx", quadratic.item())
        # 4. Scale: the quadratic model of the KL equals target_kl; a bad x^T F x skips the update
        step_size = th.sqrt(2 * target_kl / quadratic)
        if not (th.isfinite(quadratic) and quadratic > 0 and th.isfinite(step_size * direction).all()):
            self._skip_update(f"x^T F x = {quadratic.item():.3g} is not finite and positive")
            return

        # 5. Apply the step (step_length="exact": search the scale by the measured KL, sb3_npg.step_length)
        previous = [parameter.detach().clone() for parameter in self.actor_parameters]
        if self.step_length == "exact" and target_kl > 0:
            self._exact_step(observations, old, direction, previous, step_size.item(), target_kl, action_masks, policy)
            return
        add_to_parameters_(self.actor_parameters, direction, alpha=step_size.item())
        # 6. Measured KL(pi_old || pi_new) on the batch; a non-finite one puts the actor back
        with th.no_grad():
            kl = mean_summed_kl(old, action_distribution(policy, observations, action_masks))
        if not th.isfinite(kl):
            self._restore_actor(previous)
            self._skip_update(f"the KL after the step is {kl.item()}")
            return
        self.logger.record("train/step_size", step_size.item())
        self.logger.record("train/kl_divergence", kl.item())

    def _exact_step(
        self,
        observations: PyTorchObs,
        old: Distribution,
        direction: th.Tensor,
        previous: list[th.Tensor],
        initial_scale: float,
        target_kl: float,
        action_masks: th.Tensor | None = None,
        batch_policy: Any = None,
    ) -> None:
        """
        ``step_length="exact"``: along ``direction``, the scale whose measured KL is ``target_kl`` within
        ``EXACT_KL_TOLERANCE``, searched from the quadratic estimate ``initial_scale`` (see
        :func:`~sb3_npg.step_length.search_step_scale`); every trial sets ``theta_old + scale * direction`` and
        measures the KL with one forward pass (of the distribution masked by ``action_masks``, if given). The actor
        ends at the chosen scale (``theta_old`` if none is safe).

        :param target_kl: this update's ``target_kl`` (> 0)
        :param batch_policy: what gives the batch's distribution (see :meth:`_policy_step`; default: the policy)
        """

        policy = self.policy if batch_policy is None else batch_policy

        def kl_at(scale: float) -> float:
            set_parameters_along_(self.actor_parameters, previous, direction, scale)
            with th.no_grad():
                return mean_summed_kl(old, action_distribution(policy, observations, action_masks)).item()

        search = search_step_scale(kl_at, initial_scale, target_kl, EXACT_KL_TOLERANCE, EXACT_MAX_KL_EVALUATIONS)
        self.kl_search_failures += not search.converged
        self.logger.record("train/kl_evaluations", search.evaluations)
        self.logger.record("train/quadratic_kl_ratio", search.initial_kl / target_kl)
        self.logger.record("train/kl_search_failures", self.kl_search_failures)
        if search.scale == 0.0:
            self._restore_actor(previous)
            self._skip_update(
                f"no step scale in {search.evaluations} KL evaluations kept the KL below "
                f"{1 + EXACT_KL_TOLERANCE:g} target_kl (at the quadratic estimate: {search.initial_kl:.3g})"
            )
            return
        set_parameters_along_(self.actor_parameters, previous, direction, search.scale)
        self.logger.record("train/step_size", search.scale)
        self.logger.record("train/kl_divergence", search.kl)

    def _current_target_kl(self) -> float:
        """This update's ``target_kl``: the number, or the schedule's value at the current progress remaining."""
        return float(self.target_kl(self._current_progress_remaining) if callable(self.target_kl) else self.target_kl)

    def _restore_actor(self, previous: list[th.Tensor]) -> None:
        """Set the actor parameters back to ``previous`` (their values before the step)."""
        with th.no_grad():
            for parameter, value in zip(self.actor_parameters, previous, strict=True):
                parameter.copy_(value)

    def _skip_update(self, reason: str) -> None:
        """Leave the actor unchanged, warn and count the skipped update."""
        self.skipped_updates += 1
        warnings.warn(f"NPG skipped the policy update {self._n_updates}: {reason}", RuntimeWarning, stacklevel=3)
        self.logger.record("train/step_size", 0.0)
        self.logger.record("train/kl_divergence", 0.0)

    def _fit_critic(self, observations: PyTorchObs, returns: th.Tensor, batch_rows: np.ndarray | None = None) -> float:
        """
        ``n_critic_updates`` epochs of minibatch regression of the value function on the returns, on the minibatches
        ``RolloutBuffer.get(batch_size)`` would yield (see :func:`sb3_npg.critic.fit_critic`).

        :param batch_rows: the buffer row of each row of the batch (``None``: the buffer's order)
        :return: the mean value loss
        """
        return fit_critic(self.policy, observations, returns, self.n_critic_updates, self.batch_size, batch_rows)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "actor_parameters"]
