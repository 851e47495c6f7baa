import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _training_toys import ToyPrior

from dalle2_pytorch.training import DiffusionPriorTrainer
from dalle2_pytorch.training.trackers import ConsoleLogger, Tracker, WandbLogger, create_logger, make_image_grid, progress


def test_make_image_grid_layout():
    images = torch.zeros(5, 3, 4, 6)
    for i in range(5):
        images[i, 0] = i / 4  # red channel encodes the index
    grid = make_image_grid(images, nrow=3, padding=1, pad_value=1.0)
    assert grid.size == (3 * 7 + 1, 2 * 5 + 1) and grid.mode == "RGB"
    arr = np.asarray(grid)
    for i in range(5):
        r, c = divmod(i, 3)
        top, left = 1 + r * 5, 1 + c * 7
        assert (arr[top : top + 4, left : left + 6, 0] == round(i / 4 * 255)).all()
        assert (arr[top : top + 4, left : left + 6, 1:] == 0).all()
    assert (arr[0] == 255).all()  # padding
    assert (arr[6:10, 15:21] == 255).all()  # the empty sixth cell is padding


def test_make_image_grid_clamps_and_validates():
    grid = make_image_grid(torch.full((1, 1, 2, 2), 3.0), padding=0)
    assert grid.mode == "L" and (np.asarray(grid) == 255).all()
    with pytest.raises(ValueError, match="c in"):
        make_image_grid(torch.zeros(2, 4, 3, 3))
    with pytest.raises(ValueError, match="empty"):
        make_image_grid(torch.zeros(0, 3, 3, 3))


def test_progress_main_only():
    assert not progress(range(3), accelerator=SimpleNamespace(is_main_process=True)).disable
    assert progress(range(3), accelerator=SimpleNamespace(is_main_process=False)).disable


def test_console_logger(tmp_path, capsys):
    logger = create_logger("console", tmp_path)
    assert isinstance(logger, ConsoleLogger)
    logger.init({"a": 1})
    logger.log({"loss": torch.tensor(0.5), "lr": 1e-4}, step=3)
    logger.log_images(torch.rand(2, 3, 4, 4), captions=["a", "b"], image_section="train", step=3)
    out = capsys.readouterr().out
    assert "[step 3] loss: 0.5, lr: 0.0001" in out
    assert (tmp_path / "images" / "train_00000003.png").exists()
    silent = ConsoleLogger(tmp_path / "other", accelerator=SimpleNamespace(is_main_process=False))
    silent.log({"loss": 1.0})
    silent.log_images(torch.rand(1, 3, 2, 2), step=1)
    assert capsys.readouterr().out == "" and not (tmp_path / "other").exists()
    with pytest.raises(ValueError, match="log_type"):
        create_logger("custom", tmp_path)


def test_wandb_logger_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(tmp_path, wandb_project="dalle2-test", wandb_run_name="t")
    with pytest.raises(RuntimeError, match="init"):
        logger.log({"x": 1})
    logger.init({"lr": 1e-4}, {"extra": True})
    try:
        logger.log({"loss": torch.tensor(1.5)}, step=1)
        logger.log_images(torch.rand(4, 3, 8, 8), captions=["a cat", "a dog", "x", "y"], image_section="samples", step=1)
        f = tmp_path / "note.txt"
        f.write_text("hello")
        logger.log_file(f)
        run_dir = tmp_path / "wandb"
        run_id = logger.run.id
    finally:
        logger.finish()
    runs = list(run_dir.glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1
    assert list(runs[0].rglob("samples_*.png")), "logged image grid missing from the offline run"
    assert (runs[0] / "files" / "note.txt").exists()
    assert list(runs[0].glob("*.wandb"))
    with pytest.raises(ValueError, match="wandb_project"):
        WandbLogger(tmp_path)


def _trainer(seed=0):
    torch.manual_seed(seed)
    return DiffusionPriorTrainer(ToyPrior(), lr=1e-2, ema_update_after_step=0, ema_update_every=1)


def _train(t, n):
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        t(text_embed=torch.randn(4, 8, generator=g), image_embed=torch.randn(4, 8, generator=g))
        t.update()


def test_tracker_save_and_recall(tmp_path):
    tracker = Tracker(tmp_path / "run", keep_last=2)
    t = _trainer()
    for _ in range(3):
        _train(t, 1)
        written = tracker.save(t, is_best=t.num_steps_taken() == 2, reference_model_path=True, epoch=0)
    assert sorted(p.name for p in tracker.checkpoint_root.iterdir()) == ["step_00000002", "step_00000003"]
    best = json.loads((tmp_path / "run" / "best.ckpt" / "trainer_state.json").read_text())
    assert best["step"] == 2
    assert written["reference_model"] == tmp_path / "run" / "latest_model.pth"

    fresh = _trainer(seed=9)
    meta = Tracker(tmp_path / "run").recall(fresh)
    assert meta["step"] == 3 and fresh.num_steps_taken() == 3
    assert torch.equal(fresh.unwrapped_prior.net[0].weight, t.unwrapped_prior.net[0].weight)


def test_tracker_from_config_save_targets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from dalle2_pytorch.config import TrackerConfig

    cfg = TrackerConfig(
        data_path=str(tmp_path / "data"),
        log={"log_type": "console"},
        load={"load_from": "local", "file_path": str(tmp_path / "out" / "latest_3.pth")},
        save=[
            {"save_to": "local", "save_type": "checkpoint", "save_latest_to": "out/latest_{epoch}.pth"},
            {"save_to": "local", "save_type": "model", "save_latest_to": "out/model.pth", "save_best_to": "out/best_model.pth"},
        ],
    )
    tracker = Tracker.from_config(cfg)
    t = _trainer()
    _train(t, 2)
    written = tracker.save(t, is_best=True, epoch=3)
    assert (tmp_path / "out" / "latest_3.pth" / "manifest.json").exists()
    assert (tmp_path / "out" / "model.pth").is_file() and (tmp_path / "out" / "best_model.pth").is_file()
    assert len(written) == 5
    with pytest.raises(ValueError, match="epoch"):
        tracker.save(t)  # the path template needs `epoch`

    # recall from the configured local path (auto_resume is off in this config)
    fresh = _trainer(seed=3)
    meta = Tracker.from_config(cfg).recall(fresh)
    assert meta["step"] == 2 and meta["epoch"] == 3


def test_tracker_refuses_foreign_nonempty_dir(tmp_path):
    (tmp_path / "something").write_text("x")
    with pytest.raises(ValueError, match="overwrite_data_path"):
        Tracker(tmp_path)
    Tracker(tmp_path, overwrite_data_path=True)
