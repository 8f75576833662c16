from pathlib import Path

import pytest
import yaml

from framework.core.config import load_config, save_config
from framework.core.errors import ConfigError

BASE = """
name: base
model:
  encoder: {name: efficientnet_lite, variant: 0, pretrained: false}
  llm: {name: hf_causal_lm, config: {model_type: llama, hidden_size: 32}, tokenizer: byte}
  projector: {name: mlp}
  mask_head: {name: fpn, dim: 16}
data: {root: /tmp/x, image_size: 64, batch_size: 2}
trainer: {max_epochs: 3}
optim: {lr: 0.001}
"""


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(path, overrides=None):
    return load_config(path, overrides, validate_components=False)


def test_base_inheritance_deep_merge_and_list_replacement(tmp_path):
    write(tmp_path, "base/b.yaml", BASE + "optim: {betas: [0.8, 0.9], lr: 0.001}\n")
    child = write(
        tmp_path,
        "exp/child.yaml",
        "base: ../base/b.yaml\nname: child\nmodel: {mask_head: {dim: 32}}\noptim: {betas: [0.5, 0.6]}\n",
    )
    cfg = load(child)
    assert cfg["name"] == "child"
    assert cfg["model"]["mask_head"] == {"name": "fpn", "dim": 32}  # deep merge keeps name
    assert cfg["optim"]["betas"] == [0.5, 0.6]  # lists replaced
    assert cfg["optim"]["lr"] == 0.001
    assert cfg["trainer"]["max_epochs"] == 3
    assert "base" not in cfg


def test_a_child_that_swaps_a_component_drops_the_old_components_keys(tmp_path):
    write(tmp_path, "b.yaml", BASE.replace("projector: {name: mlp}", "projector: {name: mlp, hidden: 64}"))
    child = write(
        tmp_path,
        "c.yaml",
        "base: b.yaml\nmodel:\n  projector: {name: cross_attention, dim: 16}\n  mask_head: {dim: 32}\n",
    )
    model = load_config(child)["model"]  # validated: a leftover 'hidden' of mlp would be an unknown parameter
    assert model["projector"] == {"name": "cross_attention", "dim": 16}
    assert model["mask_head"] == {"name": "fpn", "dim": 32}  # same component: still merged key by key
    assert model["encoder"]["variant"] == 0
    swapped = load_config(child, ["model.projector.name=prototype_mix", "model.projector.prototypes=8"])["model"]
    assert swapped["projector"] == {"name": "prototype_mix", "prototypes": 8}  # the same rule for dotted overrides
    assert load(child, ["model.projector.heads=2"])["model"]["projector"] == {"name": "cross_attention", "dim": 16, "heads": 2}


def test_dotted_overrides_and_interpolation(tmp_path):
    path = write(tmp_path, "a.yaml", BASE + "seed: 3\noutput_dir: runs/${name}-${seed}\n")
    cfg = load(path, ["model.mask_head.dim=64", "trainer.max_epochs=1", "name=over"])
    assert cfg["model"]["mask_head"]["dim"] == 64
    assert cfg["trainer"]["max_epochs"] == 1
    assert cfg["output_dir"] == "runs/over-3"


def test_schema_defaults_are_filled(tmp_path):
    cfg = load(write(tmp_path, "a.yaml", BASE))
    assert cfg["loss"]["bce_weight"] == 5.0 and cfg["loss"]["num_points"] == 12544
    assert cfg["optim"]["warmup_ratio"] == 0.03


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown top-level key 'trainr'.*did you mean 'trainer'"):
        load(write(tmp_path, "a.yaml", BASE + "trainr: {}\n"))


def test_unknown_nested_key_and_wrong_type_name_file_and_key(tmp_path):
    path = write(tmp_path, "a.yaml", BASE + "data: {imge_size: 3}\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(path.resolve()) in str(err.value) or str(path) in str(err.value)
    assert "imge_size" in str(err.value)
    with pytest.raises(ConfigError, match="data.batch_size"):
        load(write(tmp_path, "b.yaml", BASE + "data: {batch_size: many}\n"))


def test_malformed_yaml_reports_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "name: x\nmodel:\n  encoder: {name: a\n  llm: b\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: malformed YAML"):
        load(path)


def test_base_cycle(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\nname: a\n")
    write(tmp_path, "b.yaml", "base: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match="cycle"):
        load(tmp_path / "a.yaml")


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key.path=value"):
        load(write(tmp_path, "a.yaml", BASE), ["trainer.max_epochs"])
    # a value YAML cannot read (two unquoted colons) names the override and how to quote it
    with pytest.raises(ConfigError, match=r"override 'name=a: b: c': the value is not valid YAML \(mapping"):
        load(write(tmp_path, "a.yaml", BASE), ["name=a: b: c"])


def test_saved_resolved_config_round_trips(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "c.yaml", "base: base.yaml\noutput_dir: out/${name}\n")
    cfg = load(child, ["optim.lr=0.5"])
    saved = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert "${" not in saved.read_text()
    assert yaml.safe_load(saved.read_text())["optim"]["lr"] == 0.5
    assert load(saved) == cfg


def test_component_validation_at_load_time(tmp_path):
    path = write(tmp_path, "a.yaml", BASE)
    with pytest.raises(ConfigError, match="unknown projector 'mlpp'.*did you mean 'mlp'"):
        load_config(path, ["model.projector.name=mlpp"])
    with pytest.raises(ConfigError, match="model.mask_head.dimm: unknown parameter"):
        load_config(path, ["model.mask_head.dimm=3"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.slot_lr_scale.decoder=0.5", r"optim.slot_lr_scale: unknown slot\(s\) \['decoder'\]; slots: encoder, "),
        ("optim.slot_lr_scale.encoder=-1", r"optim.slot_lr_scale.encoder: expected a number >= 0, got -1"),
        ("optim.lr=-0.1", r"optim.lr: expected a number >= 0"),
        ("optim.warmup_ratio=1.0", r"optim.warmup_ratio: expected a fraction in \[0, 1\)"),
        ("data.batch_size=0", r"data.batch_size: expected a number >= 1, got 0"),
        ("data.questions_per_image=3", r"data.questions_per_image: 3 must divide data.batch_size \(2\)"),
        ("data.on_bad_sample=ignore", r"data.on_bad_sample: expected one of error, skip"),
        ("data.augment.hflip=2", r"data.augment.hflip: expected a probability in \[0, 1\]"),
        ("eval.tta=all", r"eval.tta: expected one of none, flips, dihedral"),
        ("predict.overlap=1.5", r"predict.overlap: expected a fraction in \[0, 1\)"),
        ("model.readout.name=argmax", r"model.readout: unknown readout 'argmax'"),
        ("loss.dice_weight=-1", r"loss.dice_weight: expected a number >= 0, got -1"),
        ("loss.num_points=0", r"loss.num_points: expected a number >= 1, got 0"),
        ("loss.importance_sample_ratio=1.5", r"loss.importance_sample_ratio: expected a fraction in \[0, 1\]"),
        ("optim.betas=[0.9,1.5]", r"optim.betas: expected \[beta1, beta2\], each in \[0, 1\)"),
        ("seed=-1", r"seed: expected an integer in \[0, 2\*\*32\), got -1"),
        ("trainer.accumulate_grad_batches=0", r"trainer.accumulate_grad_batches: expected a number >= 1, got 0"),
        ("trainer.check_val_every_n_epoch=0", r"trainer.check_val_every_n_epoch: expected a number >= 1, got 0"),
        ("trainer.max_epochs=-5", r"trainer.max_epochs: expected a number >= -1, got -5"),
        ("trainer.val_check_interval=0", r"trainer.val_check_interval: expected a number > 0"),
        ("tracking.retry_s=-1", r"tracking.retry_s: expected a number >= 0, got -1"),
        ("tracking.val_overlays=-2", r"tracking.val_overlays: expected a number >= 0, got -2"),
    ],
)
def test_the_whole_config_is_checked_when_it_is_loaded(tmp_path, override, message):
    path = write(tmp_path, "c.yaml", BASE)
    with pytest.raises(ConfigError, match=f"^{path}: {message}"):
        load_config(path, [override])  # before any data or model is built


def test_the_read_out_defaults_to_the_projectors_queries(tmp_path):
    assert load(write(tmp_path, "c.yaml", BASE))["model"]["readout"] == {"name": "query"}
