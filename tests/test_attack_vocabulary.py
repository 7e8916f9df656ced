"""One attack vocabulary: every attack that a config describes is read by one function, ``Attack.from_dict``.

The three config families:

* ``rai_probe/configs/attack/*.yaml``: the probe's attack group;
* the entries of ``rai_probe/configs/training/eval_attacks/*.yaml`` (robust accuracy of
  the train and evaluate jobs), except the ``ensemble:`` entries, which name
  other entries;
* the ``attack`` of ``rai_probe/configs/training/train.yaml`` (adversarial training).

What is checked: every attack of every family loads into
:class:`~rai_probe.perturbations.Attack` through ``Attack.from_dict`` alone;
they spell the sparsity ``q`` one way (top level, never ``options.q``); the
training recipe's attack is the PGD-L2 it has always been (the step
``lr: null`` is ``2.5 * epsilon / steps``); ``q`` given at the top level and
in ``options`` is one option, and two different values are refused naming
``q``; and in each family a misspelt key is refused naming it, both by
``Attack.from_dict`` and by the job that reads the family (the override to
fix: ``+attack.epsilom``, ``eval_attacks.<entry>.epsilom``, an option
misspelt inside ``options`` at ``...options.<name>``).
"""

from __future__ import annotations

import dataclasses
import pathlib

import pytest
from omegaconf import OmegaConf

from rai_probe.errors import SettingError, UnknownSettingError
from rai_probe.jobs.config_dir import CONFIG_DIR
from rai_probe.jobs.errors import ConfigError
from rai_probe.perturbations.attacks import OPTION_ALIASES, Attack
from rai_probe.probing.settings import attack_from_config
from rai_probe.training import run as training_run
from rai_probe.training.run import eval_attacks, train_from_config, training_attack

CONFIGS = CONFIG_DIR

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Every key an attack config may hold: the fields of Attack, the option aliases and the label ``name``.
VOCABULARY = {f.name for f in dataclasses.fields(Attack)} | set(OPTION_ALIASES) | {"name"}


def _load(path: pathlib.Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def probe_attacks() -> list[tuple[str, dict]]:
    return [(f"attack/{path.stem}", _load(path)) for path in sorted((CONFIGS / "attack").glob("*.yaml"))]


def eval_attack_entries() -> list[tuple[str, dict]]:
    entries = []
    for path in sorted((CONFIGS / "training" / "eval_attacks").glob("*.yaml")):
        for name, entry in _load(path).items():
            if "ensemble" not in entry:
                entries.append((f"eval_attacks/{path.stem}/{name}", entry))
    return entries


def train_recipe_attack() -> dict:
    return _load(CONFIGS / "training" / "train.yaml")["attack"]


ALL = probe_attacks() + eval_attack_entries() + [("training/train.yaml:attack", train_recipe_attack())]


def test_each_family_has_attacks():
    families = [label.split("/")[0].split(":")[0] for label, _ in ALL]
    assert families.count("attack") >= 11 and families.count("eval_attacks") >= 9
    assert families.count("training") == 1


@pytest.mark.parametrize("label, settings", ALL, ids=[label for label, _ in ALL])
def test_every_config_attack_loads_with_one_function(label, settings):
    assert set(settings) <= VOCABULARY, f"{label}: keys outside the attack vocabulary"
    attack = Attack.from_dict(settings, where=label)
    assert isinstance(attack, Attack) and attack.optimizer == settings["optimizer"]
    assert attack.epsilon == settings["epsilon"] and attack.steps == settings.get("steps", 10)
    for alias in OPTION_ALIASES:  # the sparsity is spelt at the top level, as rai_probe/configs/attack/*.yaml do
        assert alias not in (settings.get("options") or {}), f"{label}: options.{alias} instead of {alias}"
        if settings.get(alias) is not None:
            assert attack.options[alias] == settings[alias]


def test_the_train_recipe_attack_is_pgd_l2_with_a_random_start():
    attack = Attack.from_dict(train_recipe_attack())
    assert attack == training_attack(train_recipe_attack())
    assert attack == Attack("L2ProjectedOptim", epsilon=1.5, steps=10, lr=2.5 * 1.5 / 10, random_init="l2")


def test_eval_attacks_read_their_sparsity_from_the_top_level_q():
    attacks = eval_attacks(_load(CONFIGS / "training" / "eval_attacks" / "mnist.yaml"))
    assert attacks["l1_eps10"].options == {"q": 0.99}
    assert attacks["l1_apgd_eps10"].options == {"q": 0.8, "initial_step": 2.0, "checkpoints": [0.22, 0.03, 0.06]}
    assert eval_attacks(_load(CONFIGS / "training" / "eval_attacks" / "cifar10.yaml"))["l1_eps12"].options == {
        "q": 0.99}


def test_q_at_the_top_level_and_in_options_is_one_option():
    base = {"optimizer": "L1qFrankWolfe", "epsilon": 10.0, "steps": 5}
    top, nested = Attack.from_dict({**base, "q": 0.9}), Attack.from_dict({**base, "options": {"q": 0.9}})
    assert top == nested == Attack.from_dict({**base, "q": 0.9, "options": {"q": 0.9}})
    assert Attack.from_dict({**base, "q": 0.9, "dq": None}) == top  # null: not given
    with pytest.raises(SettingError, match=r"`q` is given twice, as q=0\.9 and options\.q=0\.5") as caught:
        Attack.from_dict({**base, "q": 0.9, "options": {"q": 0.5}})
    assert caught.value.setting == "q" and caught.value.value == 0.9
    with pytest.raises(ConfigError) as caught:
        attack_from_config({**base, "q": 0.9, "options": {"q": 0.5}}, targeted=False)
    assert caught.value.override == "attack.q"


def test_the_name_label_must_be_a_string():
    assert Attack.from_dict({"name": "pgd", "optimizer": "L2ProjectedOptim", "epsilon": 1.0}).optimizer == "L2ProjectedOptim"
    with pytest.raises(SettingError) as caught:
        Attack.from_dict({"name": 3, "optimizer": "L2ProjectedOptim", "epsilon": 1.0})
    assert caught.value.setting == "name"


def _misspelt(settings: dict) -> dict:
    """``settings`` with ``epsilon`` misspelt ``epsilom``."""
    return {("epsilom" if key == "epsilon" else key): value for key, value in settings.items()}


@pytest.mark.parametrize("label, settings", [ALL[0], ALL[len(probe_attacks())], ALL[-1]],
                         ids=["probe", "eval_attacks", "train"])
def test_a_misspelt_key_is_refused_by_from_dict_naming_it(label, settings):
    with pytest.raises(UnknownSettingError, match=r"unknown setting\(s\) \['epsilom'\]") as caught:
        Attack.from_dict({**settings, "epsilom": 1.0}, where=label)
    assert caught.value.setting == "epsilom" and str(caught.value).startswith(label)
    with pytest.raises(UnknownSettingError) as caught:  # the required key misspelt: the misspelling is named
        Attack.from_dict(_misspelt(settings), where=label)
    assert caught.value.setting == "epsilom"


def test_a_misspelt_key_in_the_probe_attack_names_the_override():
    _, settings = next(item for item in probe_attacks() if item[0] == "attack/l1q")
    with pytest.raises(ConfigError, match=r"\['epsilom'\]") as caught:
        attack_from_config({**settings, "epsilom": 3}, targeted=False, overrides=["+attack.epsilom=3"])
    assert caught.value.override == "+attack.epsilom"
    with pytest.raises(ConfigError, match="initial_stp") as caught:
        attack_from_config({**settings, "options": {"initial_stp": 2.0}}, targeted=False)
    assert caught.value.override == "attack.options.initial_stp"


def test_a_misspelt_key_in_eval_attacks_names_the_entry_and_key():
    entries = _load(CONFIGS / "training" / "eval_attacks" / "mnist.yaml")
    bad = {**entries, "l2_eps2": {**entries["l2_eps2"], "epsilom": 2.0}}
    with pytest.raises(ConfigError, match=r"eval_attacks\.l2_eps2: unknown setting\(s\) \['epsilom'\]") as caught:
        eval_attacks(bad, overrides=["+eval_attacks.l2_eps2.epsilom=2"])
    assert caught.value.override == "+eval_attacks.l2_eps2.epsilom"
    apgd = entries["l1_apgd_eps10"]
    bad = {"l1_apgd_eps10": {**apgd, "options": {**apgd["options"], "initial_stp": 1.0}}}
    with pytest.raises(ConfigError, match="initial_stp") as caught:
        eval_attacks(bad)
    assert caught.value.override == "eval_attacks.l1_apgd_eps10.options.initial_stp"
    with pytest.raises(ConfigError) as caught:  # q out of range, written at the top level: named there
        eval_attacks({"l1": {**entries["l1_eps10"], "q": 1.5}})
    assert caught.value.override == "eval_attacks.l1.q"


def test_a_misspelt_key_in_the_train_attack_names_the_override_before_training(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    def no_work(*args, **kwargs):
        raise AssertionError("the job went on past its settings")

    monkeypatch.setattr(training_run, "load_dataset", no_work)
    monkeypatch.setattr(training_run, "adversarial_train", no_work)
    overrides = ["+attack.epsilom=2"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS / "training")):
        cfg = OmegaConf.to_container(compose("train", overrides=overrides), resolve=True)
    with pytest.raises(ConfigError, match=r"attack: unknown setting\(s\) \['epsilom'\]") as caught:
        train_from_config(cfg, tmp_path / "run", overrides)
    assert caught.value.override == "+attack.epsilom"
    cfg["attack"] = {**train_recipe_attack(), "lr": -1.0}
    with pytest.raises(ConfigError, match="`lr`") as caught:
        train_from_config(cfg, tmp_path / "run2", ["attack.lr=-1"])
    assert caught.value.override == "attack.lr"
