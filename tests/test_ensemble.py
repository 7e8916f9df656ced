"""AttackEnsemble: worst case over attacks of one threat model; its evaluation entry and report.

Hand-built models whose logits are per-row sums (no batch-size dependent kernels), so a member run
alone and the same member run by the ensemble on fewer rows agree; properties, never which pixels
an attack picks.
"""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from rai_probe.errors import SettingError
from rai_probe.jobs.errors import ConfigError
from rai_probe.perturbations.attacks import Attack
from rai_probe.perturbations.ensemble import AttackEnsemble, EnsembleResult, attack_norm
from rai_probe.training import run as training_run
from rai_probe.training.evaluation import evaluate, robust_accuracy
from rai_probe.training.run import CONFIG_DIR, eval_attacks, evaluate_from_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RowLinear(nn.Module):
    """Logits ``W x + b`` as an elementwise product summed per row (each row computed on its own)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1).unsqueeze(1) * self.weight).sum(-1) + self.bias


def pixel_vote(scale: float = 10.0) -> RowLinear:
    """Class k's logit is ``scale`` times pixel k (of 4 pixels; pixel 3 is ignored)."""
    return RowLinear(scale * torch.eye(3, 4), torch.zeros(3))


def with_margins(classes: list[int], margins: list[float]) -> torch.Tensor:
    images = torch.full((len(classes), 4), 0.5)
    images[torch.arange(len(classes)), torch.tensor(classes)] += torch.tensor(margins)
    return images.view(-1, 1, 2, 2)


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = logits.double()
    own = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    return own - logits.scatter(1, labels.view(-1, 1), float("-inf")).amax(1)


def changed(xadv: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return ((xadv - images) != 0).any(dim=1).flatten(1).sum(1)


#: Linf, epsilon 0.1: "weak" moves each pixel by 0.01 once (breaks margins below 0.02), "strong"
#: reaches the ball's corner (breaks margins below 0.2).
WEAK = Attack("LinfProjectedOptim", epsilon=0.1, steps=1, lr=0.01)
STRONG = Attack("LinfProjectedOptim", epsilon=0.1, steps=3, lr=0.1)


# --------------------------------------------------------------------------- #
# exact cases
# --------------------------------------------------------------------------- #
def test_later_members_attack_only_what_is_still_robust():
    images = with_margins([0, 1, 2, 0, 1, 2], [0.005, 0.05, 0.15, 0.25, 0.35, 0.3])
    labels = torch.tensor([0, 1, 2, 0, 1, 0])  # the last image is a clean mistake
    result = AttackEnsemble({"weak": WEAK, "strong": STRONG}).run(pixel_vote(), images, labels)
    assert isinstance(result, EnsembleResult) and result.members == ("weak", "strong")
    assert result.clean_correct.tolist() == [True] * 5 + [False]
    assert result.success.tolist() == [True, True, True, False, False, False]
    assert result.produced_by()[:3] == ["weak", "strong", "strong"]
    assert result.attacked.tolist() == [[True] * 5 + [False], [False, True, True, True, True, False]]
    assert result.broken_by() == {"weak": 1, "strong": 2}
    assert bool((result.first_success_step[result.success] >= 0).all())
    assert result.first_success_step[~result.success].tolist() == [-1, -1, -1]


def test_a_clean_mistake_is_never_attacked_nor_a_success():
    images = with_margins([0, 1], [0.3, 0.3])
    labels = torch.tensor([1, 0])  # both wrong
    result = AttackEnsemble({"strong": STRONG.with_(epsilon=1.0)}).run(pixel_vote(), images, labels)
    assert result.success.tolist() == [False, False] and result.member.tolist() == [-1, -1]
    assert torch.equal(result.xadv, images) and not bool(result.attacked.any())
    assert result.produced_by() == [None, None] and result.broken_by() == {"strong": 0}
    # the member alone calls them successes (already misclassified); robust accuracy agrees with the ensemble
    assert STRONG.run(pixel_vote(), images, labels).success.tolist() == [True, True]
    assert robust_accuracy(pixel_vote(), images, labels, AttackEnsemble({"s": STRONG})).tolist() == [False, False]


def test_run_all_keeps_the_sparsest_success():
    images = with_margins([0, 1, 2, 0], [0.05, 0.1, 0.15, 0.3])
    labels = torch.tensor([0, 1, 2, 0])
    dense = Attack("L1ProjectedOptim", epsilon=0.5, steps=5, lr=0.2, options={"q": 0.0})
    sparse = Attack("L1qFrankWolfe", epsilon=0.5, steps=5, options={"q": 0.75})
    alone = {name: attack.run(pixel_vote(), images, labels) for name, attack in (("dense", dense), ("sparse", sparse))}
    assert all(bool(r.success.all()) for r in alone.values())
    assert bool((changed(alone["sparse"].xadv, images) < changed(alone["dense"].xadv, images)).all())

    first_come = AttackEnsemble({"dense": dense, "sparse": sparse}).run(pixel_vote(), images, labels)
    assert first_come.produced_by() == ["dense"] * 4  # the sparse member never ran: nothing was left robust
    sparsest = AttackEnsemble({"dense": dense, "sparse": sparse}, run_all=True).run(pixel_vote(), images, labels)
    assert sparsest.produced_by() == ["sparse"] * 4 and bool(sparsest.attacked.all())
    assert torch.equal(changed(sparsest.xadv, images), changed(alone["sparse"].xadv, images))


def test_a_failure_keeps_the_result_closest_to_success():
    images = with_margins([0, 1], [0.5, 0.45])
    labels = torch.tensor([0, 1])
    result = AttackEnsemble({"weak": WEAK, "strong": STRONG}).run(pixel_vote(), images, labels)
    assert result.success.tolist() == [False, False] and result.produced_by() == ["strong", "strong"]
    strong = STRONG.run(pixel_vote(), images, labels)
    assert torch.allclose(margin(result.logits, labels), margin(strong.logits, labels))


def test_targeted_members_aim_at_the_targets_and_attack_every_image():
    images = with_margins([0, 1, 2], [0.05, 0.3, 0.05])
    targets = torch.tensor([1, 0, 2])  # image 2 is at its target already
    ensemble = AttackEnsemble({"weak": WEAK.with_(targeted=True), "strong": STRONG.with_(targeted=True)})
    assert ensemble.targeted
    result = ensemble.run(pixel_vote(), images, targets)
    assert result.clean_correct is None
    assert result.success.tolist() == [True, False, True]
    assert (result.logits.argmax(1)[result.success] == targets[result.success]).all()
    assert bool(result.attacked[0].all())  # the first member sees every image


def test_clean_predictions_are_the_eval_mode_ones_and_the_mode_is_restored():
    torch.manual_seed(0)
    model = nn.Sequential(pixel_vote(), nn.Dropout(0.9)).train()  # train-mode dropout would scramble them
    images = with_margins([0, 1, 2] * 4, [0.3] * 12)
    labels = torch.tensor([0, 1, 2] * 4)
    result = AttackEnsemble({"weak": WEAK}).run(model, images, labels)
    assert bool(result.clean_correct.all()) and model.training
    assert all(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- #
# the property: never weaker than any member
# --------------------------------------------------------------------------- #
MEMBERS = {
    "l2": lambda eps: {"pgd": Attack("L2ProjectedOptim", epsilon=eps, steps=3, lr=eps / 2),
                       "fw": Attack("L2FrankWolfe", epsilon=eps, steps=3)},
    "l1": lambda eps: {"pgd": Attack("L1ProjectedOptim", epsilon=eps, steps=3, lr=eps / 2, options={"q": 0.5}),
                       "fw": Attack("L1qFrankWolfe", epsilon=eps, steps=3, options={"q": 0.5}),
                       "fw_dense": Attack("L1FrankWolfe", epsilon=eps, steps=2)},
    "linf": lambda eps: {"pgd": Attack("LinfProjectedOptim", epsilon=eps / 4, steps=3, lr=eps / 8),
                         "fw": Attack("LinfFrankWolfe", epsilon=eps / 4, steps=3)},
}


@given(
    norm=st.sampled_from(sorted(MEMBERS)),
    epsilon=st.floats(0.05, 1.5),
    seed=st.integers(0, 2**16),
    run_all=st.booleans(),
    reverse=st.booleans(),
)
def test_the_ensemble_is_never_weaker_than_a_member(norm, epsilon, seed, run_all, reverse):
    gen = torch.Generator().manual_seed(seed)
    model = RowLinear(torch.randn(3, 4, generator=gen) * 3, torch.randn(3, generator=gen))
    images = torch.rand(10, 1, 2, 2, generator=gen)
    labels = torch.randint(0, 3, (10,), generator=gen)
    members = MEMBERS[norm](epsilon)
    if reverse:
        members = dict(reversed(list(members.items())))
    result = AttackEnsemble(members, run_all=run_all).run(model, images, labels)
    with torch.no_grad():
        correct = model(images).argmax(1) == labels
    assert torch.equal(result.clean_correct, correct)
    assert bool((result.success <= correct).all())  # a clean mistake is never a success
    kept = margin(result.logits, labels)
    for name, attack in members.items():
        alone = attack.run(model, images, labels)
        honest = alone.success & correct
        assert bool((honest <= result.success).all()), name  # whatever a member breaks, the ensemble breaks
        failed = ~result.success & correct  # every member ran on these: the kept one is the closest call
        assert bool((kept[failed] <= margin(alone.logits, labels)[failed] + 1e-9).all()), name
        if run_all:  # among successes, the fewest changed pixels
            both = result.success & honest
            assert bool((changed(result.xadv, images)[both] <= changed(alone.xadv, images)[both]).all()), name
    # what the ensemble reports is what the model says about the kept images
    with torch.no_grad():
        assert torch.allclose(model(result.xadv), result.logits, atol=1e-6)
    assert torch.equal(result.success & correct, (result.logits.argmax(1) != labels) & correct)
    assert bool(((result.member >= 0) == correct).all())


# --------------------------------------------------------------------------- #
# description and bad input
# --------------------------------------------------------------------------- #
def test_members_must_share_one_threat_model():
    l1 = Attack("L1qFrankWolfe", epsilon=10.0, options={"q": 0.99})
    cases = {
        "norm": Attack("L2ProjectedOptim", epsilon=10.0),
        "epsilon": l1.with_(epsilon=12.0),
        "targeted": l1.with_(targeted=True),
        "data_range": l1.with_(data_range=(-1.0, 1.0)),
    }
    for what, other in cases.items():
        with pytest.raises(SettingError, match="same threat model") as caught:
            AttackEnsemble({"l1": l1, "other": other})
        assert caught.value.setting == "other", what
    for bad in ({}, None, {"l1": l1, "x": {"optimizer": "L1qFrankWolfe"}}):
        with pytest.raises(SettingError):
            AttackEnsemble(bad)
    with pytest.raises(SettingError, match="run_all"):
        AttackEnsemble({"l1": l1}, run_all="yes")
    ensemble = AttackEnsemble({"l1": l1, "pgd": Attack("L1ProjectedOptim", epsilon=10.0, options={"q": 0.99})})
    assert (ensemble.norm, ensemble.epsilon, ensemble.targeted, ensemble.names) == ("l1", 10.0, False, ("l1", "pgd"))
    assert attack_norm(Attack("LinfFrankWolfe", epsilon=0.1)) == "linf"


def test_with_changes_every_member_and_round_trips():
    ensemble = AttackEnsemble({"pgd": STRONG, "weak": WEAK})
    breaking = ensemble.with_(early_stop=True)
    assert all(attack.early_stop for attack in breaking.attacks.values()) and not STRONG.early_stop
    assert AttackEnsemble.from_dict(breaking.to_dict()) == breaking
    with pytest.raises(SettingError) as caught:
        AttackEnsemble.from_dict({"ensemble": {"pgd": {"optimizer": "LinfProjectedOptim", "epsilon": -1.0}}})
    assert caught.value.setting == "ensemble.pgd.epsilon"
    with pytest.raises(SettingError) as caught:
        AttackEnsemble.from_dict({"ensemble": ["pgd", "pgd"]}, named={"pgd": STRONG})
    assert caught.value.setting == "ensemble" and "twice" in str(caught.value)


# --------------------------------------------------------------------------- #
# evaluation: the config entry, evaluate, and what scripts/evaluate.py prints
# --------------------------------------------------------------------------- #
def test_evaluate_reports_the_worst_case_and_each_member():
    images = with_margins([0, 1, 2, 0, 1, 2], [0.005, 0.05, 0.15, 0.25, 0.35, 0.3])
    labels = torch.tensor([0, 1, 2, 0, 1, 0])
    attacks = {"weak": WEAK, "strong": STRONG, "worst": AttackEnsemble({"weak": WEAK, "strong": STRONG})}
    for batch_size in (2, 250):
        report = evaluate(pixel_vote(), images, labels, attacks=attacks, batch_size=batch_size)
        assert report["clean_accuracy"] == pytest.approx(5 / 6)
        assert report["robust_accuracy"] == {
            "weak": pytest.approx(4 / 6), "strong": pytest.approx(2 / 6), "worst": pytest.approx(2 / 6)}
        assert report["ensembles"] == {"worst": {
            "members": ["weak", "strong"],
            "robust_accuracy_after": {"weak": pytest.approx(4 / 6), "strong": pytest.approx(2 / 6)},
            "broken_by": {"weak": pytest.approx(1 / 6), "strong": pytest.approx(2 / 6)},
        }}
    # adding an ensemble changes no other attack's number, even one with a random start
    random_start = {"start": Attack("LinfProjectedOptim", epsilon=0.1, steps=1, lr=0.05, random_init="linf")}
    alone = evaluate(pixel_vote(), images, labels, attacks=random_start, seed=3)
    together = evaluate(pixel_vote(), images, labels, attacks={**random_start, "worst": attacks["worst"]}, seed=3)
    assert together["robust_accuracy"]["start"] == alone["robust_accuracy"]["start"]


def _shipped_group():
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "eval_attacks" / "mnist.yaml"))


def test_the_shipped_l1_ensemble():
    attacks = eval_attacks(_shipped_group())
    ensemble = attacks["l1_ensemble_eps10"]
    assert isinstance(ensemble, AttackEnsemble)
    assert ensemble.names == ("l1_apgd_eps10", "l1q_auto_fw_eps10", "l1_eps10", "l1q_fw_eps10")
    assert ensemble.attacks["l1_eps10"] == attacks["l1_eps10"]  # members are the entries themselves
    assert (ensemble.norm, ensemble.epsilon) == ("l1", 10.0)
    # what a checkpoint records (members inline) reads back as the same ensemble
    recorded = {name: attack.to_dict() for name, attack in attacks.items()}
    assert eval_attacks(recorded) == attacks


def _evaluate_config(**eval_attacks_entries):
    return {"model": "small_cnn_mnist5k_l2", "data": "mnist5k", "split": "test", "n_eval": 6, "batch_size": 6,
            "progress": False, "threads": 1, "seed": 0, "eval_attacks": eval_attacks_entries}


@pytest.mark.parametrize(
    "entry, override, words",
    [
        ({"ensemble": ["l1", "apgd"]}, "eval_attacks.worst.ensemble", "unknown member 'apgd'"),
        ({"ensemble": []}, "eval_attacks.worst.ensemble", "non-empty list"),
        ({"ensemble": "l1"}, "eval_attacks.worst.ensemble", "ensemble"),
        ({"ensemble": ["l1", "l2"]}, "eval_attacks.worst.ensemble", "same threat model"),
        ({"ensemble": ["l1"], "run_all": "no"}, "eval_attacks.worst.run_all", "true or false"),
        ({"ensemble": ["l1"], "members": 3}, "eval_attacks.worst.members", "unknown setting"),
        ({"ensemble": {"x": {"optimizer": "L1qFrankWolfe", "epsilon": 0.0, "options": {"q": 0.9}}}},
         "eval_attacks.worst.ensemble.x.epsilon", "epsilon"),
    ],
)
def test_a_bad_ensemble_entry_is_one_paragraph_before_the_model_loads(tmp_path, monkeypatch, entry, override, words):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(training_run, "load_pretrained", no_model)
    l1 = {"optimizer": "L1qFrankWolfe", "epsilon": 10.0, "steps": 2, "options": {"q": 0.99}}
    l2 = {"optimizer": "L2ProjectedOptim", "epsilon": 1.5, "steps": 2}
    with pytest.raises(ConfigError) as caught:
        evaluate_from_config(_evaluate_config(l1=l1, l2=l2, worst=entry), tmp_path / "ev")
    message = str(caught.value)
    assert caught.value.override == override, message
    assert words in message and "\n" not in message  # one paragraph
    assert f"`{override}=" in message or override in message


def test_evaluate_job_prints_the_ensemble_and_its_members(tmp_path, caplog):
    l1 = {"optimizer": "L1ProjectedOptim", "epsilon": 10.0, "steps": 2, "lr": 1.0, "options": {"q": 0.99}}
    fw = {"optimizer": "L1qFrankWolfe", "epsilon": 10.0, "steps": 2, "options": {"q": 0.99}}
    cfg = _evaluate_config(l1=l1, fw=fw, worst={"ensemble": ["l1", "fw"]})
    with caplog.at_level(logging.INFO, logger="rai_probe.training.run"):
        report = evaluate_from_config(cfg, tmp_path / "ev")
    robust = report["robust_accuracy"]
    assert set(robust) == {"l1", "fw", "worst"} and robust["worst"] <= report["clean_accuracy"]
    details = report["ensembles"]["worst"]
    after = details["robust_accuracy_after"]
    assert robust["worst"] == after["fw"] <= after["l1"] <= report["clean_accuracy"]
    assert sum(details["broken_by"].values()) == pytest.approx(report["clean_accuracy"] - robust["worst"])
    text = caplog.text
    assert "robust accuracy worst:" in text and "worst case of l1, fw" in text
    assert "after l1:" in text and "after fw:" in text
    import json

    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["ensembles"]["worst"]["members"] == ["l1", "fw"]
