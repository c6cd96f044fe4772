"""
Drop-in use for SB3 users: what code written for PPO, TRPO, MaskablePPO and RecurrentPPO does, with NPG, MaskableNPG,
RecurrentNPG and MaskableRecurrentNPG on their defaults (only ``n_steps`` is made tiny): small rollouts, save/load,
predict, evaluation, callbacks, tensorboard, observation spaces, custom networks, BatchNorm/Dropout, gSDE (not
MaskableRecurrentNPG's: its actions are discrete), vectorized and normalized environments, parameters, copies of the
policy, and ``learn`` called again.

It is the one home of gSDE, tensorboard and the save/load round trip of the four classes; ``test_save_load.py`` tests
the files themselves (atomic saves, missing, corrupt and untrusted files, warm starts), ``test_maskable.py``,
``test_recurrent.py`` and ``test_maskable_recurrent.py`` what only their class keeps (masks over every action space,
LSTM states, both, with Dict and image observations for MaskableRecurrentNPG).
"""

import copy
import pickle
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib.common.envs import InvalidActionEnvDiscrete
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from sb3_contrib.common.maskable.evaluation import evaluate_policy as evaluate_masked_policy
from sb3_contrib.common.maskable.utils import get_action_masks
from stable_baselines3.common.callbacks import CheckpointCallback, EvalCallback, StopTrainingOnRewardThreshold
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv, VecNormalize
from torch import nn

from sb3_npg import NPG, MaskableNPG, MaskableRecurrentNPG, RecurrentNPG
from sb3_npg.actor_critic import probe_observation
from sb3_npg.maskable_recurrent import evaluate_policy as evaluate_masked_recurrent_policy
from sb3_npg.save_load import UnsafeTorchError
from sb3_npg.zoo import check_hyperparameters
from tests.envs import MaskedToyEnv, ToyEnv, image_space
from tests.torch_safety import TRUSTED_MODES, below_safe_torch

#: kind -> (class, its MlpPolicy)
ALGORITHMS: dict[str, tuple[type[NPG], str]] = {
    "npg": (NPG, "MlpPolicy"),
    "maskable": (MaskableNPG, "MlpPolicy"),
    "recurrent": (RecurrentNPG, "MlpLstmPolicy"),
    "maskable_recurrent": (MaskableRecurrentNPG, "MlpLstmPolicy"),
}
KINDS = list(ALGORITHMS)
#: The kinds that take action masks, and those with an LSTM policy
MASKED = ("maskable", "maskable_recurrent")
RECURRENT = ("recurrent", "maskable_recurrent")
N_STEPS = 32  # below the default batch_size (128): the critic's minibatch is the whole rollout
SMALL_BATCH_WARNING = "ignore:You have specified a mini-batch size"
pytestmark = pytest.mark.filterwarnings(SMALL_BATCH_WARNING, "ignore:NPG's critic does not train a shared")


def make_env(kind: str, n_envs: int = 1, vec_env_cls: type[VecEnv] | None = None, seed: int = 0) -> VecEnv:
    """CartPole for NPG and RecurrentNPG, sb3-contrib's masked identity env (4 actions, 2 invalid) for the masked kinds."""
    vec_env_kwargs = {"start_method": "fork"} if vec_env_cls is SubprocVecEnv else None
    if kind in MASKED:
        return make_vec_env(
            InvalidActionEnvDiscrete,
            n_envs=n_envs,
            seed=seed,
            env_kwargs={"dim": 4, "n_invalid_actions": 2, "ep_length": 20},
            vec_env_cls=vec_env_cls,
            vec_env_kwargs=vec_env_kwargs,
        )
    return make_vec_env("CartPole-v1", n_envs=n_envs, seed=seed, vec_env_cls=vec_env_cls, vec_env_kwargs=vec_env_kwargs)


def make_model(kind: str, env: VecEnv | None = None, policy: str | None = None, **kwargs) -> NPG:
    algorithm, mlp_policy = ALGORITHMS[kind]
    kwargs = {"n_steps": N_STEPS, "seed": 0, **kwargs}
    return algorithm(policy or mlp_policy, env if env is not None else make_env(kind), **kwargs)


def policy_parameters(model: NPG) -> th.Tensor:
    return th.cat([p.detach().flatten() for p in model.policy.parameters()])


def observations_of(kind: str, n: int = 8) -> np.ndarray:
    """``n`` observations the environment returns (a seeded reset, then random actions). Not samples of the observation
    space: gymnasium 0.29's CartPole bounds its velocities by the float32 maximum, and a uniform sample (~1e38)
    overflows any network to inf and NaN."""
    env = make_env(kind, seed=1)
    env.action_space.seed(1)
    observations = [env.reset()]
    while len(observations) < n:
        observations.append(env.step(np.array([env.action_space.sample()]))[0])
    env.close()
    return np.concatenate(observations)


def deterministic_actions(model: NPG, observations: np.ndarray) -> np.ndarray:
    """Deterministic actions of a batch (all actions valid for the masked kinds; a fresh LSTM state for the recurrent ones)."""
    if isinstance(model, RecurrentNPG):
        starts = np.ones(len(observations), dtype=bool)
        return model.predict(observations, state=None, episode_start=starts, deterministic=True)[0]
    return model.predict(observations, deterministic=True)[0]


# --------------------------------------------------------------------------------------------------------
# Rollouts smaller than batch_size
# --------------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("default")
@pytest.mark.parametrize("kind", KINDS)
def test_batch_size_above_the_rollout_is_the_whole_rollout(kind: str) -> None:
    """As PPO, A2C and TRPO accept it (warning): one critic minibatch, the same update as batch_size = rollout."""
    with pytest.warns(UserWarning, match=r"the critic's minibatch is the whole rollout \(32 samples\)"):
        large = make_model(kind)  # default batch_size: 128
    assert large.batch_size == 128
    large.learn(2 * N_STEPS)
    whole = make_model(kind, batch_size=N_STEPS).learn(2 * N_STEPS)  # (after: the seed also seeds torch's generator)
    assert large.num_timesteps == whole.num_timesteps == 2 * N_STEPS
    th.testing.assert_close(policy_parameters(large), policy_parameters(whole))


@pytest.mark.filterwarnings("error")
def test_truncated_minibatch_warning_as_ppo() -> None:
    with pytest.warns(UserWarning, match="truncated mini-batch of size 16"):
        NPG("MlpPolicy", make_env("npg", n_envs=2), n_steps=24, batch_size=32)
    NPG("MlpPolicy", make_env("npg", n_envs=2), n_steps=32, batch_size=16)  # a multiple: no warning


def test_zoo_accepts_batch_size_above_the_rollout() -> None:
    check_hyperparameters({"policy": "MlpPolicy", "n_envs": 1, "n_steps": 32, "batch_size": 128})


# --------------------------------------------------------------------------------------------------------
# BatchNorm and Dropout features extractors
# --------------------------------------------------------------------------------------------------------


class NormalizedExtractor(BaseFeaturesExtractor):
    """Linear -> BatchNorm1d (unless ``batch_norm=False``) -> ReLU -> Dropout, on a flat Box or one-hot Discrete."""

    def __init__(self, observation_space: spaces.Space, features_dim: int = 8, dropout: float = 0.5, batch_norm: bool = True):
        super().__init__(observation_space, features_dim)
        self.linear = nn.Linear(get_flattened_obs_dim(observation_space), features_dim)
        self.batch_norm = nn.BatchNorm1d(features_dim) if batch_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.dropout(th.relu(self.batch_norm(self.linear(observations.flatten(1)))))


def normalized_policy_kwargs(share: bool, batch_norm: bool = True) -> dict:
    return {
        "features_extractor_class": NormalizedExtractor,
        "features_extractor_kwargs": {"batch_norm": batch_norm},
        "share_features_extractor": share,
        "net_arch": [8],
    }


@pytest.mark.parametrize("kind", KINDS)
def test_batch_norm_and_dropout_extractor(kind: str) -> None:
    """Construction, learning, deterministic predictions (evaluation mode) and a save/load round trip."""
    for share in (True, False):
        model = make_model(kind, policy_kwargs=normalized_policy_kwargs(share))
        model.learn(2 * N_STEPS)
        observations = observations_of(kind)
        first = deterministic_actions(model, observations)
        np.testing.assert_array_equal(first, deterministic_actions(model, observations))
        assert th.isfinite(policy_parameters(model)).all()


def test_probe_observation_is_bounded_and_in_the_space() -> None:
    """
    The observation that finds the actor parameters stays in ``[-1, 1]`` and in its space: a plain sample of a wide
    ``Box`` (CartPole's velocities under gymnasium 0.29: bounds of 3.4e38) made a normalising extractor's logits NaN.
    """
    wide = spaces.Box(np.finfo(np.float32).min, np.finfo(np.float32).max, (4,), np.float32, seed=0)
    assert max(np.abs(wide.sample()).max() for _ in range(20)) > 1e30  # what a plain sample gives
    shifted = spaces.Box(5.0, 10.0, (3,))
    for space in (
        wide,
        shifted,
        gym.make("CartPole-v1").observation_space,
        spaces.Dict({"state": wide, "count": spaces.Discrete(3)}),
    ):
        for _ in range(50):
            assert space.contains(probe_observation(space))
    assert all(np.abs(probe_observation(wide)).max() <= 1.0 for _ in range(50))


def collected(model: NPG) -> NPG:
    """``model`` with a full rollout buffer (the first rollout of ``learn``), ready for ``train()``."""
    _, callback = model._setup_learn(model.n_steps)
    callback.on_training_start(locals(), globals())
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)  # type: ignore[arg-type]
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


@pytest.mark.parametrize(
    "step_options",
    [{}, {"fisher": "hessian", "step_length": "exact"}, {"fisher": "empirical", "cg_max_steps": 3}],
)
def test_running_statistics_change_only_in_the_documented_passes(step_options: dict) -> None:
    """
    The natural-gradient step (gradient, every Fisher product, the KL after it, an exact search's evaluations) runs
    in evaluation mode and does not touch BatchNorm's statistics; then one pass of the actor over the rollout, in
    training mode, updates the actor's layers once, and the critic's regression its own, once per minibatch.
    """
    model = collected(
        NPG(
            "MlpPolicy",
            make_env("npg"),
            n_steps=N_STEPS,
            batch_size=8,
            n_critic_updates=3,
            seed=0,
            policy_kwargs=normalized_policy_kwargs(share=False),
            **step_options,
        )
    )
    actor_norm = model.policy.pi_features_extractor.batch_norm
    critic_norm = model.policy.vf_features_extractor.batch_norm
    assert isinstance(actor_norm, nn.BatchNorm1d) and isinstance(critic_norm, nn.BatchNorm1d)
    tracked = int(actor_norm.num_batches_tracked), int(critic_norm.num_batches_tracked)
    running_mean = actor_norm.running_mean.clone()
    running_var = actor_norm.running_var.clone()
    model.train()
    assert int(actor_norm.num_batches_tracked) == tracked[0] + 1
    assert int(critic_norm.num_batches_tracked) == tracked[1] + 3 * (N_STEPS // 8)
    # The one update of the actor's statistics: from the rollout's pre-normalisation features, after the step
    observations = next(model.rollout_buffer.get(batch_size=None)).observations
    with th.no_grad():
        pre_normalisation = model.policy.pi_features_extractor.linear(observations)  # type: ignore[union-attr]
    momentum = actor_norm.momentum
    th.testing.assert_close(actor_norm.running_mean, (1 - momentum) * running_mean + momentum * pre_normalisation.mean(0))
    th.testing.assert_close(
        actor_norm.running_var, (1 - momentum) * running_var + momentum * pre_normalisation.var(0, unbiased=True)
    )


def test_shared_extractor_statistics_are_updated_by_the_actor_pass_and_the_critic_features() -> None:
    model = collected(NPG("MlpPolicy", make_env("npg"), n_steps=N_STEPS, seed=0, policy_kwargs=normalized_policy_kwargs(True)))
    norm = model.policy.features_extractor.batch_norm
    assert isinstance(norm, nn.BatchNorm1d)
    tracked = int(norm.num_batches_tracked)
    model.train()
    assert int(norm.num_batches_tracked) == tracked + 2


def test_actor_step_is_deterministic_and_measures_the_kl_of_the_acting_policy() -> None:
    """With Dropout in the actor, the step (its g, F and KL) does not depend on the random generator."""
    kwargs = {"policy_kwargs": normalized_policy_kwargs(share=False, batch_norm=False), "n_steps": N_STEPS, "seed": 0}
    models = [collected(NPG("MlpPolicy", make_env("npg"), **kwargs)) for _ in range(2)]
    observations = next(models[0].rollout_buffer.get(batch_size=None)).observations
    models[0].policy.set_training_mode(False)
    with th.no_grad():
        old = copy.deepcopy(models[0].policy.get_distribution(observations).distribution)
    logs = []
    for seed, model in zip((1, 2), models, strict=True):
        th.manual_seed(seed)
        model.logger.record = lambda key, value, exclude=None, logs=logs: logs.append((key, value))  # type: ignore[method-assign]
        model.train()
    actors = [th.cat([p.detach().flatten() for p in model.actor_parameters]) for model in models]
    # (equal to float rounding: reductions over tensors at different addresses may round differently)
    th.testing.assert_close(actors[0], actors[1], rtol=1e-4, atol=1e-5)
    models[0].policy.set_training_mode(False)
    with th.no_grad():
        new = models[0].policy.get_distribution(observations).distribution
        kl = th.distributions.kl_divergence(old, new).mean()
    measured = [value for key, value in logs if key == "train/kl_divergence"]
    assert measured[0] == pytest.approx(measured[1], rel=1e-4)
    assert measured[0] == pytest.approx(kl.item(), rel=1e-4)  # the KL of the function that acts
    assert measured[0] == pytest.approx(models[0].target_kl, rel=0.5)


# --------------------------------------------------------------------------------------------------------
# Copies of the policy
# --------------------------------------------------------------------------------------------------------


def assert_copies(model: NPG, observations: np.ndarray) -> None:
    """A deep copy and a pickled copy of the policy (made first: a prediction would replace what the policy keeps)
    predict as the policy does."""
    duplicates = (copy.deepcopy(model.policy), pickle.loads(pickle.dumps(model.policy)))
    expected = deterministic_actions(model, observations)
    for duplicate in duplicates:
        clone = copy.copy(model)
        clone.policy = duplicate
        np.testing.assert_array_equal(deterministic_actions(clone, observations), expected)
        for mine, theirs in zip(model.policy.parameters(), duplicate.parameters(), strict=True):
            assert mine is not theirs and th.equal(mine, theirs)


@pytest.mark.parametrize("kind", KINDS)
def test_policy_deep_copies_and_pickles(kind: str, tmp_path: Path) -> None:
    """As sb3-contrib's TRPO policy: after construction, after load (trusted or not) and after learn."""
    model = make_model(kind)
    observations = observations_of(kind)
    assert_copies(model, observations)
    model.save(tmp_path / "model.zip")
    for trusted in TRUSTED_MODES:
        loaded = type(model).load(tmp_path / "model.zip", env=make_env(kind), trusted=trusted)
        assert_copies(loaded, observations)
    model.learn(N_STEPS)
    assert_copies(model, observations)


# --------------------------------------------------------------------------------------------------------
# The rest of what SB3 users do
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_predicts_the_same_and_continues(kind: str, tmp_path: Path) -> None:
    """Trusted or not: the same actions, the hyperparameters and the actor/critic split kept, trains on in more envs."""
    model = make_model(kind, target_kl=0.05).learn(N_STEPS)
    observations = observations_of(kind)
    model.save(tmp_path / "model")
    for trusted in TRUSTED_MODES:
        loaded = type(model).load(tmp_path / "model.zip", env=make_env(kind, n_envs=2), trusted=trusted)
        np.testing.assert_array_equal(deterministic_actions(loaded, observations), deterministic_actions(model, observations))
        assert loaded.num_timesteps == N_STEPS and loaded.target_kl == 0.05
        critic = {id(p) for group in loaded.policy.optimizer.param_groups for p in group["params"]}
        assert {id(p) for p in loaded.actor_parameters} == {id(p) for p in loaded.policy.parameters() if id(p) not in critic}
        before = policy_parameters(loaded).clone()
        loaded.learn(2 * N_STEPS, reset_num_timesteps=False)  # one rollout of 2 envs
        assert loaded.num_timesteps == 3 * N_STEPS and loaded._n_updates == 2
        after = policy_parameters(loaded)
        assert not th.equal(after, before) and th.isfinite(after).all()


@below_safe_torch
@pytest.mark.parametrize("kind", KINDS)
def test_untrusted_load_refuses_below_safe_torch(kind: str, tmp_path: Path) -> None:
    """Below torch 2.10 ``load(trusted=False)`` refuses, naming the class, the version and how to load a trusted file
    (which then loads it)."""
    model = make_model(kind)
    model.save(tmp_path / "model.zip")
    name = type(model).__name__
    with pytest.raises(UnsafeTorchError) as refused:
        type(model).load(tmp_path / "model.zip", env=make_env(kind), trusted=False)
    message = str(refused.value)
    assert message.startswith(f"{name}.load(path, trusted=False) refused: torch {th.__version__} is installed"), message
    assert message.endswith(f"{name}.load(path, trusted=True) (sb3_npg.enjoy / record_video: --trusted)."), message
    loaded = type(model).load(tmp_path / "model.zip", env=make_env(kind), trusted=True)
    np.testing.assert_array_equal(
        deterministic_actions(loaded, observations_of(kind)), deterministic_actions(model, observations_of(kind))
    )


@pytest.mark.parametrize("kind", KINDS)
def test_predict_single_batched_and_with_states_or_masks(kind: str) -> None:
    model = make_model(kind)
    observations = observations_of(kind)
    single, _ = model.predict(observations[0], deterministic=True)
    assert single.shape == ()
    batched = deterministic_actions(model, observations)
    assert batched.shape == (len(observations),)
    assert model.action_space.contains(int(batched[0]))
    if kind in RECURRENT:
        starts = np.ones(len(observations), dtype=bool)
        actions, states = model.predict(observations, state=None, episode_start=starts, deterministic=True)
        assert states is not None and states[0].shape == (1, len(observations), 256)
        again, _ = model.predict(observations, state=None, episode_start=starts, deterministic=True)
        np.testing.assert_array_equal(actions, again)
        _, next_states = model.predict(observations, state=states, episode_start=~starts, deterministic=True)
        assert not np.allclose(next_states[0], states[0])  # the LSTM state is carried
    if kind in MASKED:
        masks = np.zeros((len(observations), 4), dtype=bool)
        masks[np.arange(len(observations)), np.arange(len(observations)) % 4] = True  # one valid action per row
        for deterministic in (True, False):
            actions, _ = model.predict(observations, deterministic=deterministic, action_masks=masks)
            np.testing.assert_array_equal(actions, np.arange(len(observations)) % 4)


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_policy(kind: str) -> None:
    model = make_model(kind).learn(N_STEPS)
    evaluate: Callable = {"maskable": evaluate_masked_policy, "maskable_recurrent": evaluate_masked_recurrent_policy}.get(
        kind, evaluate_policy
    )
    rewards, lengths = evaluate(model, make_env(kind, seed=1), n_eval_episodes=3, return_episode_rewards=True)
    assert len(rewards) == len(lengths) == 3 and all(length >= 1 for length in lengths)
    if kind in MASKED:  # with masks, an invalid action is never taken: rewards in [0, ep_length]
        assert all(0 <= reward <= 20 for reward in rewards)


@pytest.mark.parametrize("kind", KINDS)
def test_callbacks_eval_checkpoint_and_stop_on_reward_threshold(kind: str, tmp_path: Path) -> None:
    stop = StopTrainingOnRewardThreshold(reward_threshold=-1.0, verbose=0)  # any reward stops at the first evaluation
    eval_class = MaskableEvalCallback if kind in MASKED else EvalCallback
    evaluation = eval_class(
        make_env(kind, seed=1),
        callback_on_new_best=stop,
        eval_freq=2 * N_STEPS,
        n_eval_episodes=2,
        best_model_save_path=str(tmp_path / "best"),
        log_path=str(tmp_path / "eval"),
    )
    checkpoint = CheckpointCallback(save_freq=N_STEPS, save_path=str(tmp_path / "checkpoints"), name_prefix="npg")
    model = make_model(kind).learn(10 * N_STEPS, callback=[checkpoint, evaluation])
    assert model.num_timesteps == 2 * N_STEPS  # stopped by the threshold at the first evaluation
    assert evaluation.n_calls == 2 * N_STEPS and len(evaluation.evaluations_results) == 1
    assert (tmp_path / "best" / "best_model.zip").exists() and (tmp_path / "eval" / "evaluations.npz").exists()
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["npg_32_steps.zip", "npg_64_steps.zip"]
    type(model).load(tmp_path / "checkpoints" / "npg_32_steps.zip")


@pytest.mark.parametrize("kind", KINDS)
def test_tensorboard_logging_and_learn_twice(kind: str, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = make_model(kind, tensorboard_log=str(tmp_path))
    model.learn(2 * N_STEPS, tb_log_name="run")
    model.learn(N_STEPS, tb_log_name="run", reset_num_timesteps=False)
    assert model.num_timesteps == 3 * N_STEPS and model._n_updates == 3
    (run,) = tmp_path.iterdir()  # reset_num_timesteps=False continues the same run
    events = EventAccumulator(str(run))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert run.name == "run_1" and len(list(run.glob("events.out.tfevents.*"))) == 2  # one file per learn call
    assert {"train/kl_divergence", "train/step_size", "train/value_loss", "train/xFx", "time/fps"} <= scalars
    # As with PPO: an update's logs are written with the next rollout's, and a learn call's last ones are not
    assert [event.step for event in events.Scalars("train/kl_divergence")] == [2 * N_STEPS]
    # sorted: the accumulator reads the two event files in the order of their names (the second, then a counter
    # of the process: ..., 9, 10, ... sort as text), not always in the order they were written
    assert sorted(event.step for event in events.Scalars("time/fps")) == [N_STEPS, 2 * N_STEPS, 3 * N_STEPS]
    model.learn(N_STEPS)  # without tb_log_name: a new run named after the class, as PPO's and RecurrentPPO's are
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["run_1", f"{type(model).__name__}_1"])


@pytest.mark.parametrize("kind", ["npg", "maskable", "recurrent"])  # MaskableRecurrentNPG's: test_maskable_recurrent.py
@pytest.mark.parametrize("observations", ["dict", "image"])
def test_dict_and_image_observations(kind: str, observations: str) -> None:
    image = image_space()
    space = spaces.Dict({"vector": spaces.Box(-1, 1, (3,), np.float32), "image": image}) if observations == "dict" else image
    env_class = MaskedToyEnv if kind == "maskable" else ToyEnv
    env = make_vec_env(
        env_class, n_envs=1, seed=0, env_kwargs={"action_space": spaces.Discrete(3), "observation_space": space}
    )
    prefix = {"dict": "MultiInput", "image": "Cnn"}[observations]
    policy = prefix + ("LstmPolicy" if kind == "recurrent" else "Policy")
    model = make_model(kind, env=env, policy=policy, n_steps=16)
    before = policy_parameters(model).clone()
    model.learn(32)
    assert model.num_timesteps == 32 and not th.equal(policy_parameters(model), before)
    sample = space.sample()
    action, _ = model.predict(sample, deterministic=True)
    assert env.action_space.contains(int(action))


@pytest.mark.parametrize("kind", KINDS)
def test_custom_net_arch(kind: str) -> None:
    model = make_model(kind, policy_kwargs={"net_arch": {"pi": [8], "vf": [16, 16]}})
    extractor = model.policy.mlp_extractor
    assert [layer.out_features for layer in extractor.policy_net if isinstance(layer, nn.Linear)] == [8]
    assert [layer.out_features for layer in extractor.value_net if isinstance(layer, nn.Linear)] == [16, 16]
    critic_ids = {id(p) for group in model.policy.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in critic_ids for p in extractor.value_net.parameters())
    assert not any(id(p) in critic_ids for p in extractor.policy_net.parameters())
    model.learn(N_STEPS)


@pytest.mark.parametrize("kind", ["npg", "recurrent"])
def test_gsde(kind: str, tmp_path: Path) -> None:
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    model = make_model(kind, env=env, use_sde=True, sde_sample_freq=4)
    log_std = model.policy.log_std.detach().clone()
    model.learn(2 * N_STEPS)
    assert model._n_updates == 2 and not th.equal(model.policy.log_std, log_std)  # the exploration matrix's scale trains
    assert model.logger.name_to_value["train/std"] > 0
    observations = np.random.default_rng(0).uniform(-1, 1, (4, 3)).astype(np.float32)
    model.save(tmp_path / "sde")
    loaded = type(model).load(tmp_path / "sde", env=env)
    np.testing.assert_array_equal(deterministic_actions(loaded, observations), deterministic_actions(model, observations))
    assert np.all(np.abs(deterministic_actions(model, observations)) <= 2.0)


@pytest.mark.parametrize("kind", KINDS)
def test_subproc_vec_env(kind: str) -> None:
    env = make_env(kind, n_envs=2, vec_env_cls=SubprocVecEnv)
    try:
        model = make_model(kind, env=env, n_steps=16).learn(64)
        assert model.num_timesteps == 64 and model.get_env() is env
    finally:
        env.close()


@pytest.mark.parametrize("kind", ["npg", "recurrent"])
def test_vec_normalize_with_eval_callback_and_save(kind: str, tmp_path: Path) -> None:
    env = VecNormalize(make_env(kind, n_envs=2))
    eval_env = VecNormalize(make_env(kind, seed=1), training=False, norm_reward=False)
    evaluation = EvalCallback(eval_env, eval_freq=N_STEPS, n_eval_episodes=1, log_path=str(tmp_path))  # syncs statistics
    model = make_model(kind, env=env).learn(4 * N_STEPS, callback=evaluation)
    assert model.get_env() is env and len(evaluation.evaluations_results) == 2
    np.testing.assert_array_equal(eval_env.obs_rms.mean, env.obs_rms.mean)
    env.save(str(tmp_path / "vec_normalize.pkl"))
    model.save(tmp_path / "model")
    restored = VecNormalize.load(str(tmp_path / "vec_normalize.pkl"), make_env(kind, n_envs=2))
    loaded = type(model).load(tmp_path / "model", env=restored)
    loaded.learn(2 * N_STEPS, reset_num_timesteps=False)
    assert loaded.num_timesteps == 6 * N_STEPS
    assert isinstance(loaded.get_env(), VecNormalize) and loaded.get_env().obs_rms.count > restored.obs_rms.count - 1


@pytest.mark.parametrize("kind", KINDS)
def test_set_env_and_parameters(kind: str) -> None:
    model = make_model(kind).learn(N_STEPS)
    model.set_env(make_env(kind, seed=3))
    model.learn(N_STEPS, reset_num_timesteps=False)
    assert model.num_timesteps == 2 * N_STEPS
    other = make_model(kind, env=make_env(kind, seed=4))
    observations = observations_of(kind)
    other.set_parameters(model.get_parameters())
    th.testing.assert_close(policy_parameters(other), policy_parameters(model), rtol=0, atol=0)
    np.testing.assert_array_equal(deterministic_actions(other, observations), deterministic_actions(model, observations))
    other.learn(N_STEPS)  # the critic optimiser's state was loaded too: it still fits NPG's


def test_maskable_masks_from_the_env_in_predict() -> None:
    """The MaskablePPO idiom: predict with get_action_masks(env)."""
    env = make_env("maskable")
    model = make_model("maskable", env=env).learn(N_STEPS)
    observations = env.reset()
    for _ in range(20):
        masks = get_action_masks(env)
        actions, _ = model.predict(observations, action_masks=masks)
        assert masks[0, actions[0]]
        observations, _, _, _ = env.step(actions)


@pytest.mark.parametrize("kind", KINDS)
def test_ppo_only_arguments_are_refused_by_name(kind: str) -> None:
    """PPO's target_kl=None (no early stop) is a ValueError naming target_kl; PPO-only arguments a TypeError."""
    with pytest.raises(ValueError, match=r"target_kl=None: must be a number > 0 \(it is NPG's step length"):
        make_model(kind, target_kl=None)
    for name, value in (("clip_range", 0.2), ("ent_coef", 0.01), ("n_epochs", 10), ("vf_coef", 0.5), ("max_grad_norm", 0.5)):
        with pytest.raises(TypeError, match=name):
            make_model(kind, **{name: value})
