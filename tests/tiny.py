"""The smallest run the training loop takes, for the tests that train: two environments,
replay windows of 2 x 8 steps, 3 imagined steps, one thread, the update eager."""

TINY_RUN = dict(
    num_envs=2,
    batch_size=2,
    batch_length=8,
    train_ratio=4,
    imagination_horizon=3,
    threads=1,
    compile="off",
)
