"""Bad input: missing and out-of-range options, bad InnerOpt, zero and missing gradients.

Every option check is exercised three ways: in the constructor, as a
per-group override in the constructor's param-group dicts, and through
``add_param_group`` (where the bad group must not be added).
"""

import math
import re
from functools import partial

import pytest
import torch

from conftest import FLOAT_DTYPES
from rai_probe.optim import (
    ChainedParamTransformingOptimizer,
    ClampedGradientOptimizer,
    ClampedParameterOptimizer,
    FrankWolfe,
    L1FrankWolfe,
    L1NormedGradientOptim,
    L1ProjectedOptim,
    L1qFrankWolfe,
    L1qNormedGradientOptim,
    L2FrankWolfe,
    L2NormedGradientOptim,
    L2ProjectedOptim,
    LinfFrankWolfe,
    LinfNormedGradientOptim,
    LinfProjectedOptim,
    ParamTransformingOptimizer,
    SignedGradientOptim,
    TopQGradientOptimizer,
)


def chain(params, **kwargs):
    return ChainedParamTransformingOptimizer(
        partial(TopQGradientOptimizer, q=0.5),
        partial(ClampedGradientOptimizer, clamp_max=2.0),
        params=params,
        **kwargs,
    )


#: name -> (factory(params, **kwargs), minimal valid kwargs)
CLASSES = {
    "PTO": (ParamTransformingOptimizer, {"lr": 0.1}),
    "Signed": (SignedGradientOptim, {"lr": 0.1}),
    "L1Normed": (L1NormedGradientOptim, {"lr": 0.1}),
    "L2Normed": (L2NormedGradientOptim, {"lr": 0.1}),
    "LinfNormed": (LinfNormedGradientOptim, {"lr": 0.1}),
    "TopQ": (TopQGradientOptimizer, {"lr": 0.1, "q": 0.5}),
    "L1qNormed": (L1qNormedGradientOptim, {"lr": 0.1, "q": 0.5}),
    "ClampedGradient": (ClampedGradientOptimizer, {"lr": 0.1, "clamp_min": -1.0, "clamp_max": 1.0}),
    "ClampedParameter": (ClampedParameterOptimizer, {"lr": 0.1, "clamp_min": -1.0, "clamp_max": 1.0}),
    "L1Projected": (L1ProjectedOptim, {"lr": 0.1, "epsilon": 1.0, "q": 0.5}),
    "L2Projected": (L2ProjectedOptim, {"lr": 0.1, "epsilon": 1.0}),
    "LinfProjected": (LinfProjectedOptim, {"lr": 0.1, "epsilon": 1.0}),
    "L1FrankWolfe": (L1FrankWolfe, {"epsilon": 1.0}),
    "L2FrankWolfe": (L2FrankWolfe, {"epsilon": 1.0}),
    "LinfFrankWolfe": (LinfFrankWolfe, {"epsilon": 1.0}),
    "L1qFrankWolfe": (L1qFrankWolfe, {"epsilon": 1.0, "q": 0.5}),
    "Chain": (chain, {"lr": 0.1}),
    "FrankWolfe": (FrankWolfe, {}),
}
PTO_NAMES = [n for n in CLASSES if n != "FrankWolfe"]
FW_FAMILY = ["L1FrankWolfe", "L2FrankWolfe", "LinfFrankWolfe", "L1qFrankWolfe"]
SGD_PTOS = [n for n in PTO_NAMES if n not in FW_FAMILY]
TOPQ_NAMES = ["TopQ", "L1qNormed", "L1Projected", "L1qFrankWolfe"]
EPS_NAMES = ["L2Projected", "LinfProjected", "L1Projected", *FW_FAMILY]
CLAMP_NAMES = ["ClampedGradient", "ClampedParameter"]
DIV_EPS_NAMES = ["L1Normed", "L2Normed", "LinfNormed", "L1qNormed", "L2Projected", "L1Projected", *FW_FAMILY, "FrankWolfe"]


def make(name, params, **override):
    factory, base = CLASSES[name]
    return factory(params, **{**base, **override})


def p2():
    return torch.zeros(2, 3, requires_grad=True)


# --------------------------------------------------------------------------- #
# out-of-range / wrong-type options: (class, option, value, extra, exception, message regex)
# --------------------------------------------------------------------------- #
def _range_msg(option, value, allowed):
    return rf"`{option}`.*{re.escape(allowed)}.*{option}={re.escape(repr(value))}"


BAD = []
for _name in TOPQ_NAMES:
    for _opt in ("q", "dq"):
        for _v in (-0.1, 1.5):
            BAD.append((_name, _opt, _v, {}, ValueError, _range_msg(_opt, _v, "[0, 1]")))
    BAD.append((_name, "q", float("nan"), {}, ValueError, _range_msg("q", float("nan"), "[0, 1]")))
    BAD.append((_name, "generator", "abc", {}, TypeError, r"`generator`.*torch\.Generator"))
    BAD.append((_name, "generator", 0, {}, TypeError, r"`generator`.*torch\.Generator"))
for _name in EPS_NAMES:
    for _v in (0, -1, 0.0, float("inf"), float("nan")):
        BAD.append((_name, "epsilon", _v, {}, ValueError, _range_msg("epsilon", _v, "> 0")))
for _name in DIV_EPS_NAMES:
    BAD.append((_name, "div_by_zero_eps", 0.0, {}, ValueError, _range_msg("div_by_zero_eps", 0.0, "> 0")))
for _name in [*FW_FAMILY, "FrankWolfe"]:
    for _v in (1.5, 2.0, -0.5):
        BAD.append(
            (_name, "lr", _v, {"use_default_lr_schedule": False}, ValueError,
             rf"`lr`.*\[0, 1\].*lr={re.escape(repr(_v))}" if _v > 0 else _range_msg("lr", _v, ">= 0"))
        )
    for _v in (-1.0, -1, float("nan"), float("inf")):
        BAD.append((_name, "lr", _v, {}, ValueError, _range_msg("lr", _v, ">= 0")))
    BAD.append((_name, "use_default_lr_schedule", "yes", {}, ValueError,
                _range_msg("use_default_lr_schedule", "yes", "True or False")))
BAD.append(("FrankWolfe", "lmo_scaling_factor", "a", {}, ValueError,
            _range_msg("lmo_scaling_factor", "a", "finite real number")))
for _name in CLAMP_NAMES:
    BAD.append((_name, "clamp_min", 3.0, {"clamp_max": 1.0}, ValueError,
                r"clamp_min <= clamp_max.*clamp_min=3\.0.*clamp_max=1\.0"))
    BAD.append((_name, "clamp_max", -2.0, {"clamp_min": -1.0}, ValueError,
                r"clamp_min <= clamp_max.*clamp_min=-1\.0.*clamp_max=-2\.0"))
    BAD.append((_name, "clamp_min", float("nan"), {}, ValueError, r"`clamp_min`.*None or a real number.*nan"))
    BAD.append((_name, "clamp_max", "a", {}, ValueError, r"`clamp_max`.*None or a real number.*'a'"))
for _name in PTO_NAMES:
    for _v in (3, -3):
        BAD.append((_name, "param_ndim", _v, {}, ValueError,
                    rf"`param_ndim`.*\[-2, 2\].*param_ndim={_v}"))
    BAD.append((_name, "param_ndim", True, {}, ValueError, _range_msg("param_ndim", True, "None or an integer")))
    BAD.append((_name, "param_ndim", 1.0, {}, ValueError, _range_msg("param_ndim", 1.0, "None or an integer")))
    BAD.append((_name, "param_ndim", "1", {}, ValueError, _range_msg("param_ndim", "1", "None or an integer")))
for _name in SGD_PTOS:
    for _opt in ("grad_scale", "grad_bias"):
        for _v in ("a", float("nan"), float("inf"), None):
            BAD.append((_name, _opt, _v, {}, ValueError, _range_msg(_opt, _v, "a finite real number")))
for _name in FW_FAMILY:  # FW transforms are PTOs: grad_scale / grad_bias are per-group options too
    for _opt in ("grad_scale", "grad_bias"):
        BAD.append((_name, _opt, "a", {"group_only": True}, ValueError,
                    _range_msg(_opt, "a", "a finite real number")))


def _ids(cases):
    return [f"{n}-{o}={v!r}{'-' + str(e) if e else ''}" for n, o, v, e, *_ in cases]


BAD_IDS = _ids(BAD)
#: the cases whose option is a constructor argument of the class
BAD_CTOR = [
    case
    for case in BAD
    if not case[3].get("group_only")
    and not (case[0] == "Chain" and case[1] not in ("param_ndim", "grad_scale", "grad_bias"))
]


def _split(extra):
    extra = dict(extra)
    group_only = extra.pop("group_only", False)
    return extra, group_only


@pytest.mark.parametrize("name, option, value, extra, exc, match", BAD_CTOR, ids=_ids(BAD_CTOR))
def test_bad_option_in_constructor(name, option, value, extra, exc, match):
    extra, _ = _split(extra)
    with pytest.raises(exc, match=match):
        make(name, [p2()], **extra, **{option: value})


@pytest.mark.parametrize("name, option, value, extra, exc, match", BAD, ids=BAD_IDS)
def test_bad_option_as_group_override(name, option, value, extra, exc, match):
    extra, _ = _split(extra)
    good = p2()
    with pytest.raises(exc, match=match):
        make(name, [{"params": [good]}, {"params": [p2()], **extra, option: value}])


@pytest.mark.parametrize("name, option, value, extra, exc, match", BAD, ids=BAD_IDS)
def test_bad_option_in_add_param_group(name, option, value, extra, exc, match):
    extra, _ = _split(extra)
    x, y = p2(), p2()
    optim = make(name, [x])
    n_groups = len(optim.param_groups)
    inner = getattr(optim, "_inner_opt", optim)
    members = getattr(optim, "members", ())
    member_groups = [len(m.param_groups) for m in members]
    with pytest.raises(exc, match=match):
        optim.add_param_group({"params": [y], **extra, option: value})
    assert len(optim.param_groups) == n_groups
    assert len(inner.param_groups) == n_groups
    assert [len(m.param_groups) for m in members] == member_groups
    assert all(p is not y for g in optim.param_groups for p in g["params"])
    # the optimizer still works after the rejected group
    x.grad = torch.ones(2, 3)
    optim.step()


def test_bad_option_in_defaults_dict():
    with pytest.raises(ValueError, match=_range_msg("q", 1.5, "[0, 1]")):
        TopQGradientOptimizer([p2()], defaults={"q": 1.5})


@pytest.mark.parametrize("name", ["L1qFrankWolfe", "Signed", "TopQ", "L2Projected", "ClampedGradient"])
def test_unknown_keyword_rejected(name):
    # a mistyped option must not be silently ignored
    with pytest.raises(TypeError):
        make(name, [p2()], epsilom=0.5)


@pytest.mark.parametrize("name", ["L1FrankWolfe", "L2FrankWolfe", "LinfFrankWolfe"])
def test_unknown_keyword_rejected_frank_wolfe(name):
    with pytest.raises(TypeError):
        make(name, [p2()], epsilom=0.5)


@pytest.mark.parametrize("name", FW_FAMILY)
@pytest.mark.parametrize("option, value", [("grad_scale", 2.0), ("grad_bias", 0.1)])
def test_frank_wolfe_family_rejects_direction_scaling(name, option, value):
    # scaling or shifting the LMO direction would let iterates leave the epsilon-ball
    with pytest.raises(ValueError, match=rf"grad_scale=1 and grad_bias=0.*{option}={value}"):
        make(name, [{"params": [p2()], option: value}])
    optim = make(name, [p2()])
    with pytest.raises(ValueError, match=rf"{option}={value}"):
        optim.add_param_group({"params": [p2()], option: value})
    assert len(optim.param_groups) == 1


def test_param_ndim_checked_against_each_param():
    # valid for the 3-D parameter, not for the 1-D one in the same group
    with pytest.raises(ValueError, match=r"`param_ndim`.*\[-1, 1\].*param_ndim=2"):
        L2NormedGradientOptim([torch.zeros(2, 2, 2, requires_grad=True), torch.zeros(3, requires_grad=True)],
                              param_ndim=2)
    # a scalar counts as ndim 1
    L2NormedGradientOptim([torch.zeros((), requires_grad=True)], param_ndim=1)
    L2NormedGradientOptim([torch.zeros((), requires_grad=True)], param_ndim=-1)
    with pytest.raises(ValueError, match=r"`param_ndim`.*param_ndim=2"):
        L2NormedGradientOptim([torch.zeros((), requires_grad=True)], param_ndim=2)


@pytest.mark.parametrize("param_ndim", [2, -2, 0, None])
def test_param_ndim_at_the_limit_is_fine(param_ndim):
    x = p2()
    optim = L2NormedGradientOptim([x], param_ndim=param_ndim, lr=1.0)
    x.grad = torch.ones(2, 3)
    optim.step()


def test_base_class_is_constructible():
    # regression: the bare base class once raised AttributeError (`_all_options` was only
    # set by __init_subclass__)
    x = p2()
    optim = ParamTransformingOptimizer([x], lr=1.0)
    x.grad = torch.ones(2, 3)
    optim.step()
    assert torch.equal(x.detach(), -torch.ones(2, 3))
    with pytest.raises(ValueError, match="param_ndim"):
        ParamTransformingOptimizer([p2()], param_ndim=3)


# --------------------------------------------------------------------------- #
# good values at the edges are accepted
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", TOPQ_NAMES)
@pytest.mark.parametrize("q", [0, 0.0, 1, 1.0])
def test_q_edges_accepted(name, q):
    make(name, [p2()], q=q, dq=1.0)


@pytest.mark.parametrize("name", [*FW_FAMILY, "FrankWolfe"])
def test_frank_wolfe_lr_above_one_fine_with_schedule(name):
    x = torch.zeros(2, 3, requires_grad=True)
    optim = make(name, [x], lr=2.0)
    assert optim.param_groups[0]["lr"] == 2.0
    optim = make(name, [x], lr=5, use_default_lr_schedule=True)
    optim.add_param_group({"params": [p2()], "lr": 3.0})
    for v in (0.0, 0.5, 1.0):
        make(name, [x], lr=v, use_default_lr_schedule=False)


@pytest.mark.parametrize("name", CLAMP_NAMES)
def test_clamp_one_sided_and_equal_bounds(name):
    factory = CLASSES[name][0]
    factory([p2()], clamp_min=0.5)
    factory([p2()], clamp_max=0.5)
    factory([p2()], clamp_min=0.5, clamp_max=0.5)
    factory([p2()], clamp_min=-math.inf, clamp_max=math.inf)


# --------------------------------------------------------------------------- #
# missing required options
# --------------------------------------------------------------------------- #
MISSING = [
    ("TopQ", {"lr": 0.1}, "q"),
    ("L1qNormed", {"lr": 0.1}, "q"),
    ("L1qFrankWolfe", {"epsilon": 1.0}, "q"),
    ("L1Projected", {"lr": 0.1, "epsilon": 1.0}, "q"),
    ("L1Projected", {"lr": 0.1, "q": 0.5}, "epsilon"),
    ("L2Projected", {"lr": 0.1}, "epsilon"),
    ("LinfProjected", {"lr": 0.1}, "epsilon"),
    ("L1FrankWolfe", {}, "epsilon"),
    ("L2FrankWolfe", {}, "epsilon"),
    ("LinfFrankWolfe", {}, "epsilon"),
    ("L1qFrankWolfe", {"q": 0.5}, "epsilon"),
    ("ClampedGradient", {"lr": 0.1}, "clamp_min"),
    ("ClampedParameter", {"lr": 0.1}, "clamp_min"),
]
MISSING_IDS = [f"{n}-{o}" for n, _, o in MISSING]


@pytest.mark.parametrize("name, kwargs, option", MISSING, ids=MISSING_IDS)
def test_missing_required_option_raises_type_error(name, kwargs, option):
    factory = CLASSES[name][0]
    with pytest.raises(TypeError, match=f"`{option}`"):
        factory([p2()], **kwargs)
    # also when the params are group dicts that do not give it
    with pytest.raises(TypeError, match=f"`{option}`"):
        factory([{"params": [p2()]}, {"params": [p2()]}], **kwargs)


@pytest.mark.parametrize("name, kwargs, option", MISSING, ids=MISSING_IDS)
def test_required_option_missing_in_one_group_raises(name, kwargs, option):
    factory, base = CLASSES[name]
    value = base[option] if option in base else 1.0
    with pytest.raises(TypeError, match=f"`{option}`"):
        factory([{"params": [p2()], option: value}, {"params": [p2()]}], **kwargs)


@pytest.mark.parametrize("name, kwargs, option", MISSING, ids=MISSING_IDS)
def test_required_option_in_every_group_is_accepted(name, kwargs, option):
    factory, base = CLASSES[name]
    value = base[option] if option in base else 1.0
    x, y = p2(), p2()
    optim = factory([{"params": [x], option: value}, {"params": [y], option: value}], **kwargs)
    assert [g[option] for g in optim.param_groups] == [value, value]
    x.grad, y.grad = torch.ones(2, 3), torch.ones(2, 3)
    optim.step()
    # a later group that does not give it is rejected, and not added
    with pytest.raises(TypeError, match=f"`{option}`"):
        optim.add_param_group({"params": [p2()]})
    assert len(optim.param_groups) == 2
    optim.add_param_group({"params": [p2()], option: value})
    assert len(optim.param_groups) == 3


def test_required_option_in_groups_behaves():
    # q given only per group: the groups behave per their own q
    x, y = torch.ones(4, requires_grad=True), torch.ones(4, requires_grad=True)
    optim = TopQGradientOptimizer(
        [{"params": [x], "q": 0.25}, {"params": [y], "q": 0.75}], lr=1.0, param_ndim=None
    )
    x.grad = torch.tensor([1.0, 2.0, 3.0, 4.0])
    y.grad = torch.tensor([1.0, 2.0, 3.0, 4.0])
    optim.step()
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(y.grad, torch.tensor([0.0, 0.0, 0.0, 4.0]))


def test_chain_member_required_option():
    # a member class without its required option, and without it in the groups
    with pytest.raises(TypeError, match="`q`"):
        ChainedParamTransformingOptimizer(TopQGradientOptimizer, params=[p2()])
    # given in every chain group, it reaches the member
    x = torch.ones(4, requires_grad=True)
    optim = ChainedParamTransformingOptimizer(
        TopQGradientOptimizer, params=[{"params": [x], "q": 0.75}], lr=1.0, param_ndim=None
    )
    x.grad = torch.tensor([1.0, -2.0, 3.0, -4.0])
    optim.step()
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 0.0, 0.0, -4.0]))
    # a bad member option through the chain's groups / add_param_group
    with pytest.raises(ValueError, match=_range_msg("q", 1.5, "[0, 1]")):
        ChainedParamTransformingOptimizer(TopQGradientOptimizer, params=[{"params": [p2()], "q": 1.5}])
    with pytest.raises(ValueError, match=_range_msg("q", -0.1, "[0, 1]")):
        optim.add_param_group({"params": [p2()], "q": -0.1})
    assert len(optim.param_groups) == 1
    assert len(optim.members[0].param_groups) == 1
    with pytest.raises(TypeError, match="`q`"):
        optim.add_param_group({"params": [p2()]})
    assert len(optim.param_groups) == 1
    assert len(optim.members[0].param_groups) == 1


def test_chain_needs_members_and_ptos():
    with pytest.raises(TypeError):
        ChainedParamTransformingOptimizer(params=[p2()])
    with pytest.raises(TypeError):
        ChainedParamTransformingOptimizer(torch.optim.SGD, params=[p2()])
    with pytest.raises(TypeError):
        ChainedParamTransformingOptimizer(partial(torch.optim.Adam, lr=0.1), params=[p2()])


# --------------------------------------------------------------------------- #
# InnerOpt
# --------------------------------------------------------------------------- #
BAD_INNER = {
    "string": "SGD",
    "None": None,
    "module class": torch.nn.Linear,
    "partial of non-optimizer": partial(torch.nn.Linear, 2, 3),
    "function": lambda params, **kw: torch.optim.SGD(params, **kw),
    "int": 3,
    "optimizer module": torch.optim,
}


@pytest.mark.parametrize("inner", BAD_INNER.values(), ids=list(BAD_INNER))
@pytest.mark.parametrize("name", ["PTO", "Signed", "TopQ", "L2Projected", "Chain"])
def test_bad_inner_opt(name, inner):
    factory, base = CLASSES[name]
    with pytest.raises(TypeError, match="InnerOpt"):
        factory([p2()], InnerOpt=inner, **base)


@pytest.mark.parametrize("name", ["PTO", "Signed", "TopQ", "L2Projected", "ClampedParameter", "Chain"])
def test_inner_opt_instance_plus_params(name):
    factory, base = CLASSES[name]
    x = p2()
    base = {k: v for k, v in base.items() if k != "lr"}
    inner = torch.optim.SGD([x], lr=0.1)
    with pytest.raises(TypeError, match="params"):
        factory([x], InnerOpt=inner, **base)
    # the same without params is fine
    optim = factory(None, InnerOpt=inner, **base)
    assert optim.param_groups is inner.param_groups


def test_inner_opt_instance_plus_inner_kwargs():
    x = p2()
    with pytest.raises(TypeError):
        SignedGradientOptim(None, InnerOpt=torch.optim.SGD([x], lr=0.1), lr=0.5)


def test_inner_opt_class_without_params():
    with pytest.raises(TypeError):
        SignedGradientOptim(None, InnerOpt=torch.optim.SGD, lr=0.1)


# --------------------------------------------------------------------------- #
# zero gradients
# --------------------------------------------------------------------------- #
X0 = [[0.1, -0.2, 0.05], [0.0, 0.3, -0.1]]  # inside every ball / box used below
ZERO_CASES = {name: CLASSES[name] for name in CLASSES}


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("param_ndim", [-1, 0, None])
@pytest.mark.parametrize("name", list(ZERO_CASES))
@pytest.mark.filterwarnings("ignore:.*keeps round:UserWarning")  # param_ndim=0: rows of one entry keep none
def test_zero_gradient_gives_zero_update(name, param_ndim, dtype, device):
    fw = name in FW_FAMILY or name == "FrankWolfe"
    # Frank-Wolfe contracts towards the origin even with a zero direction: start there
    start = torch.zeros(2, 3) if fw else torch.tensor(X0)
    x = start.to(device=device, dtype=dtype).requires_grad_(True)
    kwargs = {} if name == "FrankWolfe" else {"param_ndim": param_ndim}
    optim = make(name, [x], **kwargs)
    for _ in range(2):
        x.grad = torch.zeros_like(x)
        optim.step()
        assert torch.isfinite(x.grad).all()
        assert torch.equal(x.grad, torch.zeros_like(x))
        assert torch.isfinite(x).all()
        assert torch.equal(x.detach(), start.to(device=device, dtype=dtype))
        assert x.dtype == dtype and x.grad.dtype == dtype


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("name", ["L1Normed", "L2Normed", "LinfNormed", "L1qNormed", "L2Projected", "L1Projected"])
def test_zero_row_among_nonzero_rows(name, dtype, device):
    # only the zero row stays put; the other rows are normalized (no NaN leaks across rows)
    x = torch.zeros(2, 3, device=device, dtype=dtype, requires_grad=True)
    optim = make(name, [x], lr=0.1, param_ndim=1)
    x.grad = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 2.0]], device=device, dtype=dtype)
    optim.step()
    assert torch.isfinite(x).all() and torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[0], torch.zeros(3, device=device, dtype=dtype))
    assert torch.equal(x.detach()[0], torch.zeros(3, device=device, dtype=dtype))
    assert (x.grad[1] != 0).any()


# --------------------------------------------------------------------------- #
# parameters without a gradient
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", list(CLASSES))
def test_params_without_grad_are_skipped(name):
    x = torch.full((2, 3), 0.1, requires_grad=True)
    # y is outside every ball/box: a post-step transform applied to it would move it
    y_start = torch.full((2, 3), 5.0)
    y = y_start.clone().requires_grad_(True)
    z = y_start.clone().requires_grad_(True)  # a second group, also without grad
    optim = make(name, [{"params": [x, y]}, {"params": [z]}])
    x.grad = torch.ones(2, 3)
    for _ in range(2):
        optim.step()
    assert y.grad is None and z.grad is None
    assert torch.equal(y.detach(), y_start)
    assert torch.equal(z.detach(), y_start)
    assert not torch.equal(x.detach(), torch.full((2, 3), 0.1))
    assert y not in optim.state and z not in optim.state


def test_params_without_grad_skipped_with_adam_state():
    x, y = torch.zeros(3, requires_grad=True), torch.ones(3, requires_grad=True)
    optim = L2ProjectedOptim([x, y], InnerOpt=torch.optim.Adam, epsilon=0.5, lr=0.1)
    x.grad = torch.tensor([1.0, 0.0, 0.0])
    optim.step()
    assert torch.equal(y.detach(), torch.ones(3))  # outside the ball, but not projected
    assert set(optim.state) == {x}


# --------------------------------------------------------------------------- #
# transforms must act in place
# --------------------------------------------------------------------------- #
class RebindingOptim(ParamTransformingOptimizer):
    def _pre_step_transform_(self, param, optim_group):
        param.grad = param.grad * 2


class RebindingPostOptim(ParamTransformingOptimizer):
    def _post_step_transform_(self, param, optim_group):
        param.grad = param.grad * 2


class InPlaceOptim(ParamTransformingOptimizer):
    def _pre_step_transform_(self, param, optim_group):
        param.grad.mul_(2)


@pytest.mark.parametrize("cls", [RebindingOptim, RebindingPostOptim])
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("param_ndim", [-1, 0, None])
def test_rebinding_grad_raises(cls, contiguous, param_ndim):
    x = torch.ones(2, 3) if contiguous else torch.ones(3, 2).t()
    x = x.detach().requires_grad_(True)
    optim = cls([x], lr=1.0, param_ndim=param_ndim)
    x.grad = torch.ones_like(x)
    with pytest.raises(RuntimeError, match="rebound"):
        optim.step()


def test_in_place_twin_of_rebinding_works():
    x = torch.ones(2, 3, requires_grad=True)
    optim = InPlaceOptim([x], lr=1.0)
    x.grad = torch.ones(2, 3)
    optim.step()
    assert torch.equal(x.grad, torch.full((2, 3), 2.0))
    assert torch.equal(x.detach(), torch.full((2, 3), -1.0))


def test_sparse_grad_rejected():
    x = torch.zeros(3, 2, requires_grad=True)
    optim = SignedGradientOptim([x], lr=1.0)
    x.grad = torch.eye(3, 2).to_sparse()
    with pytest.raises(TypeError, match="dense"):
        optim.step()

