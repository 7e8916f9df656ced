"""A small probe config (2 digits, 2 steps) for in-process job tests, shared by the test modules."""

from __future__ import annotations


def base_config(**changes):
    """The shipped model on 2 mnist5k digits with a 2-step l1q attack; ``section__key=value`` changes one key.

    ``attack__q=0.5`` sets ``config["attack"]["q"]``; ``n_images=3`` a top-level key; ``model={...}``
    replaces a whole section.
    """
    config = {
        "seed": 0,
        "device": "cpu",
        "threads": None,
        "n_images": 2,
        "batch_size": 64,
        "progress": False,
        "figures": {"max_grids": 1, "images_per_grid": 2},
        "model": {"name": "small_cnn_mnist5k_l2", "pretrained": "small_cnn_mnist5k_l2"},
        "data": {"name": "mnist5k", "split": "test"},
        "mode": {"name": "explain", "targeted": False, "target": None},
        "attack": {"name": "l1q", "optimizer": "L1qFrankWolfe", "epsilon": 20.0, "q": 0.99, "steps": 2},
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            config[section] = dict(config[section], **{field: value})
        else:
            config[section] = value
    return config
