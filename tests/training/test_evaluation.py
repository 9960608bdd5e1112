"""Evaluation during training, its logs and videos, and the world model's open-loop video."""

from __future__ import annotations

import csv

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from tiny import TINY_RUN

from torchdreamer import cli
from torchdreamer.envs import EnvSpec
from torchdreamer.training import Config, DreamerAgent, Policy
from torchdreamer.training.checkpoint import load_checkpoint
from torchdreamer.training.evaluation import dream, evaluate_policy
from torchdreamer.training.logs import RunLog, read_evaluation_policies, read_evaluations
from torchdreamer.training.loop import train
from torchdreamer.training.progress import Summary
from torchdreamer.training.runner import Episode

TINY = dict(TINY_RUN, steps=96)


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def tensorboard_events(logdir, folder="tensorboard"):
    """The TensorBoard events in ``logdir/folder`` (the videos: ``tensorboard/videos``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir / folder), size_guidance={"images": 0})
    events.Reload()
    return events


def test_evaluations_leave_training_as_it_was(tmp_path):
    plain = train(Config(**TINY, eval_every=0), tmp_path / "plain", progress=False)
    evaluated = train(Config(**TINY, eval_every=32), tmp_path / "evaluated", progress=False)
    assert (plain.env_step, plain.updates) == (evaluated.env_step, evaluated.updates)
    first = load_checkpoint(tmp_path / "plain")["agent"]
    second = load_checkpoint(tmp_path / "evaluated")["agent"]
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert read_csv(tmp_path / "plain" / "episodes.csv") == read_csv(
        tmp_path / "evaluated" / "episodes.csv"
    )
    assert not (tmp_path / "plain" / "eval.csv").exists()
    assert plain.evaluation is None and "evaluation" not in plain.line(Config(**TINY))


def test_each_evaluation_writes_rows_scalars_a_video_and_the_curve(tmp_path):
    logdir = tmp_path / "run"
    config = Config(**TINY, eval_every=32, eval_episodes=3)
    summary = train(config, logdir, progress=False)
    rows = read_csv(logdir / "eval.csv")
    assert [(int(r["env_step"]), int(r["episode"])) for r in rows] == [
        (step, episode) for step in (32, 64, 96) for episode in range(3)
    ]
    # Each row names the policy: the likeliest action (config.eval_sample is off).
    assert {r["policy"] for r in rows} == {"greedy"}
    # The summary line reports the last evaluation beside the training episodes' mean,
    # each named by how its actions were chosen.
    last = [float(r["score"]) for r in rows if int(r["env_step"]) == 96]
    assert summary.evaluation == (96, last) and summary.evaluation_policy == "greedy"
    expected = (
        f"; greedy evaluation at 96 env steps {sum(last) / 3:.1f} (mean of 3 episodes); update"
    )
    assert f"10 training episodes (sampled) {summary.mean_score:.1f}{expected}" in summary.line(
        config
    )
    lengths = {(int(r["env_step"]), int(r["episode"])): int(r["length"]) for r in rows}
    for row in rows:  # CartPole scores 1 per step
        assert float(row["score"]) == int(row["length"])
    for step in (32, 64, 96):
        video = iio.imread(logdir / "videos" / f"eval_{step}.gif")
        # The first episode: its reset and each step, identical frames merged by the GIF.
        assert video.ndim == 4 and video.shape[-1] == 3
        assert 2 <= video.shape[0] <= lengths[(step, 0)] + 1
    events = tensorboard_events(logdir)
    scores = events.Scalars("eval/score")
    assert [s.step for s in scores] == [32, 64, 96]
    for scalar in scores:
        expected = np.mean([float(r["score"]) for r in rows if int(r["env_step"]) == scalar.step])
        assert scalar.value == pytest.approx(expected, rel=1e-6)
    videos = tensorboard_events(logdir, "tensorboard/videos")
    assert [image.step for image in videos.Images("eval/video")] == [32, 64, 96]
    assert read_evaluations(logdir)[64] == [float(r["score"]) for r in rows[3:6]]
    assert (logdir / "learning_curve.png").stat().st_size > 0


def test_a_resume_drops_the_evaluations_after_its_checkpoint(tmp_path):
    log = RunLog(tmp_path)
    for step in (10, 20, 30):
        log.evaluation(step, [Episode(step, 3.0, 3), Episode(step, 4.0, 4)], [], "greedy")
    log.close()
    RunLog(tmp_path, resume_step=20).close()
    assert list(read_evaluations(tmp_path)) == [10, 20]
    assert read_evaluation_policies(tmp_path) == {10: "greedy", 20: "greedy"}


def test_a_sampled_evaluation_is_named_so_in_eval_csv_and_the_summary(tmp_path):
    logdir = tmp_path / "run"
    config = Config(**TINY, eval_every=48, eval_episodes=2, eval_sample=True)
    summary = train(config, logdir, progress=False)
    rows = read_csv(logdir / "eval.csv")
    assert [(int(r["env_step"]), r["policy"]) for r in rows] == [
        (step, "sampled") for step in (48, 96) for _ in range(2)
    ]
    assert summary.evaluation_policy == "sampled"
    assert "; sampled evaluation at 96 env steps " in summary.line(config)


def test_an_eval_csv_of_an_older_run_gains_the_policy_column_on_resume(tmp_path):
    # eval.csv as runs wrote it before the policy column: its readers still read it.
    (tmp_path / "eval.csv").write_text("env_step,episode,score,length\n10,0,3,3\n10,1,4,4\n")
    assert read_evaluations(tmp_path) == {10: [3.0, 4.0]}
    assert read_evaluation_policies(tmp_path) == {}  # not recorded
    log = RunLog(tmp_path, resume_step=10)
    log.evaluation(20, [Episode(20, 5.0, 5)], [], "sampled")
    log.close()
    rows = read_csv(tmp_path / "eval.csv")
    assert [(r["env_step"], r["score"], r["policy"]) for r in rows] == [
        ("10", "3", ""),
        ("10", "4", ""),
        ("20", "5", "sampled"),
    ]
    assert read_evaluations(tmp_path) == {10: [3.0, 4.0], 20: [5.0]}
    assert read_evaluation_policies(tmp_path) == {20: "sampled"}
    # The summary names an unrecorded policy by the config's.
    old = Summary(96, 10, 1.0, 9.0, evaluation=(10, [3.0, 4.0]))
    assert "; greedy evaluation at 10 env steps 3.5" in old.line(Config(**TINY))
    sampled = Config(**TINY, eval_sample=True)
    assert "; sampled evaluation at 10 env steps 3.5" in old.line(sampled)


def cartpole_policy():
    """An untrained CartPole policy."""
    config = Config(imagination_horizon=3)
    agent = DreamerAgent((4,), 2, discrete=True, config=config)
    return Policy(agent, EnvSpec((4,), discrete=True, action_dim=2), config)


def test_episodes_are_shared_out_over_the_copies_round_by_round():
    policy = cartpole_policy()
    result = evaluate_policy(policy, "CartPole-v1", 5, seed=3, parallel=2)
    # Copy 0 plays episodes 1, 3, 5 and copy 1 episodes 2, 4, whatever their lengths.
    assert [episode.env for episode in result.episodes] == [0, 1, 0, 1, 0]
    again = evaluate_policy(policy, "CartPole-v1", 5, seed=3, parallel=2)
    assert result.scores == again.scores  # seeded: the same episodes
    # It drew from its own streams: the global generator is where it was.
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    evaluate_policy(policy, "CartPole-v1", 2, seed=3, sample=True)
    assert torch.equal(torch.rand(3), expected)


def image_agent_and_batch(steps=8, side=16):
    torch.manual_seed(0)
    agent = DreamerAgent((side, side, 3), 2, discrete=True, config=Config())
    batch = TensorDict(
        observation=torch.randint(0, 256, (2, steps, side, side, 3), dtype=torch.uint8),
        prev_action=torch.nn.functional.one_hot(torch.randint(0, 2, (2, steps)), 2).float(),
        is_first=torch.zeros(2, steps, dtype=torch.bool),
        batch_size=[2, steps],
    )
    return agent, batch


def test_dream_shows_truth_model_and_error_and_predicts_open_loop():
    agent, batch = image_agent_and_batch()
    side, context = 16, 3
    torch.manual_seed(1)
    frames = np.stack(dream(agent, batch, context=context))  # [T, 3 * side, 2 * side, 3]
    assert frames.shape == (8, 3 * side, 2 * side, 3)
    truth = batch["observation"].numpy()
    for b in range(2):
        column = frames[:, :, b * side : (b + 1) * side]
        np.testing.assert_array_equal(column[:, :side], truth[b])
        model = column[:, side : 2 * side].astype(np.float64) / 255
        error = column[:, 2 * side :].astype(np.float64) / 255
        # error = (model - truth + 1) / 2, each rounded to uint8 from the float values
        expected = (model - truth[b] / 255 + 1) / 2
        np.testing.assert_allclose(error, expected, atol=1.5 / 255)
    # Open loop: after the context the model sees no observation, so changing the
    # later observations changes the truth panel only.
    changed = batch.clone()
    changed["observation"][:, context:] = 255 - changed["observation"][:, context:]
    torch.manual_seed(1)
    other = np.stack(dream(agent, changed, context=context))
    np.testing.assert_array_equal(other[:, side : 2 * side], frames[:, side : 2 * side])
    assert not np.array_equal(other[context:, :side], frames[context:, :side])


def test_dream_refuses_vector_models_and_bad_contexts():
    agent = DreamerAgent((4,), 2, discrete=True, config=Config(imagination_horizon=3))
    with pytest.raises(ValueError, match="image observations"):
        dream(agent, TensorDict(batch_size=[1, 4]))
    image_agent, batch = image_agent_and_batch()
    with pytest.raises(ValueError, match=r"context must be in \[1, 7\]"):
        dream(image_agent, batch, context=8)


def test_cli_eval_writes_a_video(tmp_path, capsys):
    logdir = tmp_path / "run"
    train(Config(**TINY), logdir, progress=False)
    video = tmp_path / "first.gif"
    assert cli.main(["eval", str(logdir), "--episodes", "2", "--video", str(video)]) == 0
    out = capsys.readouterr().out
    assert "score over 2 episodes" in out and f"video of the first episode in {video}" in out
    assert "; greedy policy" in out
    assert cli.main(["eval", str(logdir), "--episodes", "2", "--sample"]) == 0
    assert "; sampled policy" in capsys.readouterr().out
    assert iio.imread(video).ndim == 4


def test_an_image_run_writes_the_policy_and_dream_videos(tmp_path):
    pytest.importorskip("ale_py")
    logdir = tmp_path / "run"
    config = Config(**{**TINY, "steps": 48}, env="atari100k:pong", image_size=32, eval_every=48)
    config.eval_episodes = 1
    train(config, logdir, progress=False)
    policy = iio.imread(logdir / "videos" / "eval_48.gif")
    assert policy.shape[1:] == (128, 128, 3)  # the 32 x 32 observations, enlarged 4 times
    dreamed = iio.imread(logdir / "videos" / "dream_48.gif")
    # Four sequences side by side, truth / model / error stacked.
    assert dreamed.shape[0] >= 2 and dreamed.shape[2] / dreamed.shape[1] == pytest.approx(4 / 3)
    events = tensorboard_events(logdir, "tensorboard/videos")
    assert [image.step for image in events.Images("eval/dream")] == [48]


def test_a_stop_request_abandons_an_evaluation():
    policy = cartpole_policy()
    asked = []

    def stop():
        asked.append(1)
        return len(asked) > 3  # three steps, then the request comes

    assert evaluate_policy(policy, "CartPole-v1", 2, seed=0, stop=stop) is None
    assert len(asked) == 4
