import pytest
import torch

from turbosample.nodes.builtin_nodes import decode, empty_latent
from turbosample.nodes.registry import NODE_BY_ID, NODES
from turbosample.nodes.spec import NodeInputError


def test_node_ids_are_prefixed_and_unique():
    ids = [n.node_id for n in NODES]
    assert len(ids) == len(set(ids))
    assert all(i.startswith("TurboSample") for i in ids)
    for spec in NODES:
        for p in spec.widgets:
            if p.type != "COMBO":
                p.coerce(p.default)  # every default is valid for its own declaration
            else:
                assert p.default in p.options()


def test_nodes_sit_in_one_category_tree():
    from turbosample.nodes import categories

    used = {spec.category for spec in NODES}
    assert used == set(categories.ALL)  # every branch used, nothing at the root or beside the tree
    assert all(c.startswith("TurboSample/") and c.count("/") == 1 for c in used)
    by_id = {spec.node_id: spec.category for spec in NODES}
    assert by_id["TurboSampleMagCache"] == by_id["TurboSampleRAS"] == categories.ACCELERATORS
    assert by_id["TurboSampleDPMSolverV3Sampler"] == by_id["TurboSampleDualFastSampler"] == categories.SAMPLERS
    assert by_id["TurboSampleGITSScheduler"] == by_id["TurboSampleScheduler"] == categories.SCHEDULERS
    assert by_id["TurboSampleMagCacheCalibrate"] == by_id["TurboSampleDPMSolverV3EMS"] == categories.CALIBRATION


@pytest.mark.parametrize("value, message", [
    (0, ">= 1"), (1001, "<= 1000"), (2.5, "type INT"), ("x", "type INT"), (True, "type INT")])
def test_int_input_errors(value, message):
    steps = NODE_BY_ID["TurboSampleScheduler"].param("steps")
    with pytest.raises(NodeInputError, match=message):
        steps.coerce(value)


def test_int_inputs_stay_exact_up_to_the_largest_seed():
    seed = NODE_BY_ID["TurboSampleSample"].param("seed")
    for value in (2**53 + 1, 2**64 - 1, str(2**64 - 1), " 9007199254740993 "):
        assert seed.coerce(value) == int(value) and isinstance(seed.coerce(value), int)
    assert seed.coerce(7.0) == 7 and seed.coerce("1e3") == 1000
    with pytest.raises(NodeInputError, match="<= 18446744073709551615, got 18446744073709551616"):
        seed.coerce(2**64)
    with pytest.raises(NodeInputError, match="type INT"):
        seed.coerce(float("inf"))


def test_float_input_rejects_nan():
    cfg = NODE_BY_ID["TurboSampleSample"].param("cfg")
    with pytest.raises(NodeInputError, match="finite"):
        cfg.coerce(float("nan"))


def test_empty_latent_and_size_errors():
    (latent,) = empty_latent(48, 32, 2)
    assert latent["samples"].shape == (2, 8, 4, 6)  # the autoencoder's 8 channels at 1/8 of the image
    with pytest.raises(NodeInputError, match="multiples of 16"):
        empty_latent(40, 32, 1)
    with pytest.raises(NodeInputError, match=r"from 32 to 256 pixels \(trained at 32 and 64\)"):
        empty_latent(512, 64, 1)
    with pytest.raises(NodeInputError, match="from 32"):
        empty_latent(16, 64, 1)
    with pytest.raises(NodeInputError, match="missing input"):
        NODE_BY_ID["TurboSampleEmptyLatent"].run(width=32)


def test_decode_runs_the_autoencoder_and_refuses_foreign_latents():
    from turbosample.models.builtin import WEIGHTS, cached_autoencoder, latent_space

    z = torch.randn(2, 8, 4, 6, generator=torch.Generator().manual_seed(0))
    (img,) = decode({"samples": z})
    assert img.shape == (2, 32, 48, 3)
    with torch.no_grad():
        expected = cached_autoencoder(latent_space(WEIGHTS).autoencoder).decode(z).clamp(-1, 1)
    torch.testing.assert_close(img, ((expected + 1) / 2).permute(0, 2, 3, 1))
    with pytest.raises(NodeInputError, match="VAE Decode"):
        decode({"samples": torch.zeros(1, 4, 8, 8)})
    with pytest.raises(NodeInputError, match="VAE Decode"):
        decode({"samples": torch.zeros(1, 3, 64, 64)})  # the former pixel-space latents
    with pytest.raises(NodeInputError, match="NaN"):
        decode({"samples": torch.full((1, 8, 4, 4), float("nan"))})


def test_schedule_plot_draws_each_schedule_and_rejects_bad_sigmas():
    import numpy as np
    import pytest
    import torch

    from turbosample.nodes.schedule_plot import plot_sigmas, schedule_image
    from turbosample.nodes.spec import NodeInputError

    (image,) = schedule_image(torch.linspace(1, 0, 9))
    assert image.shape == (1, 300, 480, 3) and 0 <= float(image.min()) and float(image.max()) <= 1
    arr = np.asarray(plot_sigmas({"a": torch.linspace(1, 0, 5), "b": torch.tensor([1.0, 0.2, 0.0])}))
    blue, orange = (arr == (31, 119, 180)).all(-1), (arr == (255, 127, 14)).all(-1)
    assert blue.sum() > 100 and orange.sum() > 100  # both curves drawn in their own colours
    # a linear schedule runs from the top-left to the bottom-right corner of the plot area
    rows, cols = np.nonzero(blue)
    assert rows[cols.argmin()] < rows[cols.argmax()]
    for bad in (torch.tensor([1.0]), torch.tensor([float("nan"), 0.0]), torch.zeros(3)):
        with pytest.raises(NodeInputError):
            plot_sigmas({"bad": bad})


def test_schedule_plot_labels_sit_in_the_margins_below_the_title():
    import numpy as np
    import torch
    from PIL import ImageDraw

    from turbosample.nodes.schedule_plot import MARGIN, TITLE, chart_font, plot_sigmas

    arr = np.asarray(plot_sigmas({"a": torch.linspace(14.6, 0, 9)}).convert("L"))
    left, top, _right, _bottom = MARGIN
    ink = arr < 128
    assert ink[:top - 4, :left + 60].sum() == 0  # top-left corner (where a UI label sits) stays blank
    assert ink[top - 8:top + 8, :left - 4].any()  # the largest sigma's tick label, beside the plot's top edge
    assert ink[:top - 4].any()  # the title above the plot
    font = chart_font()
    draw = ImageDraw.Draw(plot_sigmas({"a": torch.linspace(1, 0, 3)}))
    assert draw.textlength(" ", font=font) >= 3 and draw.textlength(TITLE, font=font) > 90  # spaces that show


def test_flow_shift_scheduler_node_matches_the_flow_shift_functions_and_flux_rule():
    import pytest
    import torch

    from turbosample.nodes.flow_shift_nodes import flow_shift_sigmas
    from turbosample.nodes.spec import NodeInputError
    from turbosample.samplers.flow_shift import resolution_mu, shifted_schedule
    from turbosample.samplers.model_sampling import FlowSampling
    from turbosample.samplers.schedulers import compute_sigmas

    (const,) = flow_shift_sigmas("karras", 10, 1.0, "constant", 3.0, 1024, 1024, 16, 0.5, 1.15)
    assert torch.allclose(const, compute_sigmas(FlowSampling(shift=3.0), "karras", 10))
    (res,) = flow_shift_sigmas("simple", 10, 1.0, "resolution", 3.0, 1024, 1024, 16, 0.5, 1.15)
    assert torch.equal(res, shifted_schedule("simple", 10, image_seq_len=4096))
    assert resolution_mu(4096) == pytest.approx(1.15) and resolution_mu(256) == pytest.approx(0.5)
    (small,) = flow_shift_sigmas("simple", 10, 1.0, "resolution", 3.0, 256, 256, 16, 0.5, 1.15)
    assert (small[1:-1] < res[1:-1]).all()  # fewer tokens -> less shift toward high noise
    with pytest.raises(NodeInputError, match="leave no tokens"):
        flow_shift_sigmas("simple", 10, 1.0, "resolution", 3.0, 8, 8, 16, 0.5, 1.15)


def test_gap_sampler_nodes_reduce_to_their_base_and_reject_bad_knobs():
    import pytest
    import torch

    from turbosample.nodes.gap_sampler_nodes import NODES
    from turbosample.nodes.spec import NodeInputError
    from turbosample.samplers.model_sampling import FlowSampling
    from turbosample.samplers.registry import SAMPLERS

    spec = {n.node_id: n for n in NODES}
    ms = FlowSampling()

    def model(x, sigma, **_):
        return 0.5 * x / (1 + sigma.view(-1, 1, 1, 1))

    x, sigmas = torch.randn(1, 3, 8, 8), torch.linspace(1, 0, 7)
    extra = {"seed": 3, "model_sampling": ms}

    def run(info):
        return info.fn(model, x.clone(), sigmas, extra_args=dict(extra), callback=None, disable=True, **info.options)

    (churn0,) = spec["TurboSampleChurnSampler"].fn(method="heun", s_churn=0.0, s_tmin=0.0, s_tmax=1e6, s_noise=1.0)
    assert torch.equal(run(churn0), run(SAMPLERS["heun"]))
    (hb1,) = spec["TurboSampleMomentumSampler"].fn(method="ghvb", order=1, beta=1.0)
    assert torch.allclose(run(hb1), run(SAMPLERS["euler"]), atol=1e-6)
    (ts0,) = spec["TurboSampleTimeShiftSampler"].fn(base_sampler="dpmpp_2m", window=0, cutoff=300)
    assert torch.equal(run(ts0), run(SAMPLERS["dpmpp_2m"]))
    with pytest.raises(NodeInputError):
        spec["TurboSampleChurnSampler"].fn(method="euler", s_churn=-1.0, s_tmin=0.0, s_tmax=1.0, s_noise=1.0)
    with pytest.raises(NodeInputError):
        spec["TurboSampleMomentumSampler"].fn(method="hb", order=2, beta=0.0)


def test_gits_node_searches_a_schedule_on_the_builtin_model():
    import pytest

    from turbosample.nodes.builtin_nodes import encode_text, load_builtin_model
    from turbosample.nodes.gits_nodes import gits_sigmas
    from turbosample.nodes.spec import NodeInputError

    (model,) = load_builtin_model(1.0)
    (pos,), (neg,) = encode_text("red apple"), encode_text("")
    (latent,) = empty_latent(32, 32, 1)
    (sigmas,) = gits_sigmas(model, pos, neg, latent, seed=0, cfg=4.0, steps=4, batch=1, coeff=1.15)
    assert sigmas.shape == (5,) and float(sigmas[0]) == pytest.approx(1.0) and float(sigmas[-1]) == 0.0
    assert (sigmas[1:] < sigmas[:-1]).all()
    with pytest.raises(NodeInputError, match="steps"):
        gits_sigmas(model, pos, neg, latent, seed=0, cfg=4.0, steps=61, batch=1, coeff=1.15)
