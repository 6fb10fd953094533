import pytest

from affvae.config import Config, build_config, load_config, parse_override, save_config
from affvae.errors import ConfigError


def test_defaults_and_overrides():
    cfg = build_config({"loss": {"beta": 2}}, ["loss.gamma=3", "model.filters=[4, 8]", "data.unseen=[LT]"])
    assert cfg.loss.beta == 2.0 and cfg.loss.gamma == 3.0
    assert cfg.model.filters == [4, 8] and cfg.data.unseen == ["LT"]
    assert cfg.loss.convention == "reference"
    assert build_config(overrides={"train.epochs": 7}).train.epochs == 7


def test_round_trip(tmp_path):
    cfg = build_config(overrides=["seed=5", "loss.beta_schedule.kind=cyclical"])
    p = save_config(cfg, tmp_path / "config.yaml")
    again = load_config(p)
    assert again == cfg
    assert again.flat()["loss.beta_schedule.kind"] == "cyclical"


def test_bare_on_off_are_the_amp_choices_not_booleans(tmp_path):
    # YAML reads a bare on/off as true/false, in --set values and in config files alike
    assert build_config(overrides=["train.amp=off"]).train.amp == "off"
    assert build_config(overrides=["train.amp=on"]).train.amp == "on"
    (tmp_path / "c.yaml").write_text("train:\n  amp: off\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.train.amp == "off" and load_config(save_config(cfg, tmp_path / "again.yaml")).train.amp == "off"
    with pytest.raises(ConfigError, match="train.amp"):
        build_config(overrides=["train.amp=1"])


@pytest.mark.parametrize("override, needle", [
    ("model.latnt_dims=3", "unknown key 'model.latnt_dims'"),
    ("loss.beta=-1", "loss.beta: Input should be greater than or equal to 0"),
    ("train.batch_size=1", "train.batch_size"),
    ("loss.recon=l1", "loss.recon"),
    ("data.val_fraction=0.75", "leave at least 10%"),
    ("nonsense", "expected key=value"),
])
def test_bad_config_is_one_clear_line(override, needle):
    with pytest.raises(ConfigError) as e:
        build_config(overrides=[override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_yaml_names_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("loss: {beta: 1\n")
    with pytest.raises(ConfigError, match="c.yaml: not valid YAML"):
        load_config(p)
    p.write_text("loss:\n  gama: 1\n")
    with pytest.raises(ConfigError, match="c.yaml: unknown key 'loss.gama'"):
        load_config(p)


def test_folder_source_needs_a_path():
    with pytest.raises(ConfigError, match="data.path is required"):
        build_config(overrides=["data.source=folder"])
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


def test_non_utf8_config_is_one_line_naming_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"\xff\xfe\x00: garbage\x00\n")
    with pytest.raises(ConfigError, match=r"c.yaml: not UTF-8 text \(byte 0xff at offset 0\)") as e:
        load_config(p)
    assert "\n" not in str(e.value)


def test_an_empty_config_file_is_refused(tmp_path):
    for text in ("", "\n\n", "# only a comment\n"):
        p = tmp_path / "c.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError, match="c.yaml: empty config; expected sections data, model"):
            load_config(p)
    assert load_config(None).train.epochs == Config().train.epochs  # no file: the defaults, as before
