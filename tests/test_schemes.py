"""The data and hybrid schemes against one process, in real gloo groups of 2 and 4 processes:
the same weights after SGD steps with dropout on (docs/parallelism.md)."""

from dataclasses import replace
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F

from distributed import run_ranks
from alexnet_mp.errors import UserError
from alexnet_mp.net.arch import full_spec, one_tower_spec
from alexnet_mp.net.model import AlexNet
from alexnet_mp.parallel.data_parallel import parallelize_data
from alexnet_mp.parallel.hybrid import check_hybrid, hybrid_full_state_dict, parallelize_hybrid

SIZE, CLASSES, BATCH, STEPS, LR = 67, 8, 8, 3, 0.003
SPECS = {"full": full_spec, "one_tower": one_tower_spec}


def _tiny(name: str) -> AlexNet:
    """The ``name`` net with every layer 8 times narrower (fc 512 units): the same structure, fast."""
    spec = SPECS[name](CLASSES)
    layers = tuple(replace(l, width=l.width // 8) if l.name != "fc8" else l for l in spec.layers)
    torch.manual_seed(0)
    return AlexNet(replace(spec, layers=layers), input_size=SIZE, init="he")


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 3, SIZE, SIZE, generator=g) * 50,
             torch.randint(0, CLASSES, (BATCH,), generator=g)) for _ in range(STEPS)]


def _sgd(params):
    return torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=5e-4)


@lru_cache
def _one_process(name: str) -> dict:
    net = _tiny(name).train()
    opt = _sgd(net.parameters())
    torch.manual_seed(7)  # dropout
    for x, y in _batches():
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net.state_dict()


@lru_cache
def _one_process_per_pass(name: str, k: int) -> dict:
    """The hybrid's fc_update=pass schedule in one process: pool5 of the whole batch, then for
    each of k chunks of it the fc layers forward, backward and an SGD step of the fc weights
    alone; the conv weights step once on the global batch's mean gradient."""
    net = _tiny(name).train()
    opt = _sgd(net.parameters())
    fcs, b = net.spec.fcs, BATCH // k
    torch.manual_seed(7)
    for x, y in _batches():
        opt.zero_grad(set_to_none=True)
        keep = 1 - net.spec.dropout_p
        masks = {l.name: torch.empty(BATCH, l.width).bernoulli_(keep) / keep for l in fcs if l.dropout}
        pool5 = torch.flatten(net(x, until=net.spec.convs[-1].name), 1)
        leaf = pool5.detach().requires_grad_()
        for j in range(k):
            h = leaf[j * b:(j + 1) * b]
            for l in fcs:
                h = getattr(net, l.name)(h)
                h = F.relu(h) if l.relu else h
                h = h * masks[l.name][j * b:(j + 1) * b] if l.name in masks else h
            F.cross_entropy(h, y[j * b:(j + 1) * b]).backward()
            opt.step()  # only the fc weights have gradients
            for l in fcs:
                getattr(net, l.name).weight.grad = getattr(net, l.name).bias.grad = None
        pool5.backward(leaf.grad / k)
        opt.step()
    return net.state_dict()


def _data(rank: int, world: int, name: str) -> dict:
    net = parallelize_data(_tiny(name).train())
    opt = _sgd(net.parameters())
    b = BATCH // world
    torch.manual_seed(7)
    for x, y in _batches():
        opt.zero_grad()
        F.cross_entropy(net(x[rank * b:(rank + 1) * b]), y[rank * b:(rank + 1) * b]).backward()
        opt.step()
    return net.module.state_dict()


def _hybrid(rank: int, world: int, name: str, fc8: str, fc_update: str) -> dict:
    net = parallelize_hybrid(_tiny(name).train(), fc8=fc8)
    opt = _sgd(net.parameters())
    b = BATCH // world
    torch.manual_seed(7)
    losses = []
    for x, y in _batches():
        opt.zero_grad(set_to_none=True)
        losses.append(float(net.train_step(x[rank * b:(rank + 1) * b], y[rank * b:(rank + 1) * b],
                                           fc_update=fc_update, fc_step=opt.step, step=opt.step)))
    return {"state": hybrid_full_state_dict(net), "losses": losses}


# Each scheme on 2 and 4 processes, each net, fc8 and fc_update on one of them (the processes
# start once per process count: their start costs more than these tiny steps).
CASES = {2: {"data": (_data, "one_tower"), "hybrid": (_hybrid, "one_tower", "split", "step"),
             "hybrid per pass": (_hybrid, "full", "one", "pass")},
         4: {"data": (_data, "full"), "hybrid": (_hybrid, "full", "one", "step"),
             "hybrid per pass": (_hybrid, "one_tower", "split", "pass")}}


def _hybrid_eval(rank: int, world: int) -> torch.Tensor:
    """Logits of this rank's rows of a 3-image batch shared as the loader shares a last batch
    (unequal; on 4 processes one gets none)."""
    net = parallelize_hybrid(_tiny("full").eval(), fc8="split" if world == 2 else "one")
    x = _batches()[0][0][:3]
    with torch.no_grad():
        return net(x[3 * rank // world:3 * (rank + 1) // world])


def _all_cases(rank: int, world: int) -> dict:
    return {"eval": _hybrid_eval(rank, world),
            **{case: fn(rank, world, *args) for case, (fn, *args) in CASES[world].items()}}


@pytest.fixture(scope="module", params=[2, 4])
def spawned(request):
    world = request.param
    return world, run_ranks(_all_cases, world, world=world)


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, w in want.items():
        scale = float(w.abs().max())
        assert float((got[key] - w).abs().max()) <= 1e-5 * scale, key


@pytest.mark.parametrize("case", list(CASES[2]))
def test_scheme_gives_the_weights_of_one_process(spawned, case):
    world, results = spawned
    fn, name, *rest = CASES[world][case]
    want = _one_process_per_pass(name, world) if rest[-1:] == ["pass"] else _one_process(name)
    start = _tiny(name).state_dict()
    for rank_result in results:
        got = rank_result[case] if fn is _data else rank_result[case]["state"]
        assert any(not torch.equal(got[k], start[k]) for k in start)  # it trained
        _assert_same(got, want)


def test_hybrid_loss_is_the_global_batch_mean_on_every_process(spawned):
    world, results = spawned
    net = _tiny(CASES[world]["hybrid"][1]).train()
    torch.manual_seed(7)
    x, y = _batches()[0]
    with torch.no_grad():
        want = float(F.cross_entropy(net(x), y))
    for rank_result in results:
        assert rank_result["hybrid"]["losses"][0] == pytest.approx(want, rel=1e-5)


def test_hybrid_evaluates_unequal_shares_as_one_process(spawned):
    world, results = spawned
    with torch.no_grad():
        want = _tiny("full").eval()(_batches()[0][0][:3])
    got = torch.cat([r["eval"] for r in results])
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())


def test_a_process_count_that_does_not_divide_a_split_layer_is_one_line_error():
    with pytest.raises(UserError, match="3 processes do not divide"):
        check_hybrid(full_spec(1000), 3)
    with pytest.raises(UserError, match="fc8.s 1000 units"):
        check_hybrid(full_spec(1000), 16, fc8="split")
    with pytest.raises(UserError, match="batch_size=10"):
        check_hybrid(full_spec(1000), 4, batch_size=10)


def test_convnet2_rates_scale_each_part_and_survive_the_schedule():
    from alexnet_mp.train.optim import PlateauSchedule, build_optimizer, param_groups, scale_rates
    net = _tiny("one_tower")
    groups = param_groups(net, weight_decay=5e-4, bias_lr_mult=2.0)
    opt = build_optimizer(groups, lr=0.01, momentum=0.9, weight_decay=5e-4, rule="pytorch")
    fc = {id(p) for l in net.spec.fcs for p in getattr(net, l.name).parameters()}
    scale_rates(opt, lambda p: 1.0 if id(p) in fc else 4.0)  # the hybrid with per-pass updates, K = 4
    schedule = PlateauSchedule(opt, warmup_steps=0)
    schedule.begin_step(5)
    rate = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert len(rate) == len(list(net.parameters()))
    for name, p in net.named_parameters():
        want = 0.01 * (2.0 if name.endswith("bias") else 1.0) * (1.0 if id(p) in fc else 4.0)
        assert rate[id(p)] == pytest.approx(want), name


def test_checkpoints_from_before_the_schemes_resume_as_towers(tmp_path):
    from alexnet_mp.config.scheme import SchemeConfig
    from alexnet_mp.train.checkpoint_policy import check_resumable
    from omegaconf import OmegaConf
    now = {"seed": 0, "scheme": OmegaConf.to_container(OmegaConf.structured(SchemeConfig))}
    check_resumable({"seed": 0}, now, tmp_path)
    with pytest.raises(UserError, match="scheme.name"):
        check_resumable({"seed": 0}, {**now, "scheme": {**now["scheme"], "name": "hybrid"}}, tmp_path)
