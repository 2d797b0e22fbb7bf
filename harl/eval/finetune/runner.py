"""The protocol from a config: :class:`FinetuneRunner` (backbone, data, subsets, search, final stage) and :func:`run_finetune`."""

from __future__ import annotations

import copy
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import OmegaConf

from harl.checkpoint import atomic_torch_save
from harl.errors import ConfigError
from harl.eval.finetune.files import _pretrain_facts, _read_json, _write_csv, _write_json, stage_name, subset_label
from harl.eval.finetune.model import FinetuneModel
from harl.eval.finetune.schema import config_digest, validate_finetune_cfg
from harl.eval.finetune.train import evaluate_classifier, train_classifier
from harl.eval.pretrained import load_pretrained_backbone
from harl.utils.device import resolve_device


class FinetuneRunner:
    """Runs :func:`run_finetune`'s protocol; attributes expose the pieces for tests."""

    def __init__(self, cfg: Any, run_dir: Optional[str] = None):
        self.cfg = validate_finetune_cfg(cfg)
        c = self.cfg
        default_dir = os.path.join(str(c.checkpoint.dir), "finetune", f"{c.name}-{config_digest(c)}")
        self.run_dir = os.path.abspath(run_dir or c.checkpoint.run_dir or default_dir)
        self.device = resolve_device(c.accelerator)

    # -- pieces ----------------------------------------------------------------------------------
    def build_backbone(self):
        c = self.cfg
        kwargs = OmegaConf.to_container(c.backbone.kwargs, resolve=True) or None
        return load_pretrained_backbone(c.pretrained_feature_extractor, c.backbone.name, kwargs,
                                        random_init=bool(c.random_init), seed=int(c.seed))

    def input_transform(self, info: Dict[str, Any]):
        use = self.cfg.eval_highpass
        if use is None:
            use = bool(info.get("highpass"))
        if not use:
            return None
        from harl.ops.filters import HighPass

        return HighPass(int(info.get("hp_kernel") or 11), float(info.get("hp_sigma") or 5.0))

    def data(self, info: Dict[str, Any], facts: Dict[str, Any]):
        """(train source, train transform, eval transform, val dataset, num_classes, crop, mean, std)."""
        # lazy: imports torchvision
        from harl.data import DATASETS, build_classification_dataset, build_eval_transform, dataset_stats

        c = self.cfg
        d = c.data
        aug = d.augmentations
        crop = int(aug.crop_size or facts.get("crop_size") or 224)
        mean = list(aug.mean) if aug.mean is not None else info.get("mean")
        std = list(aug.std) if aug.std is not None else info.get("std")
        if mean is None or std is None:
            d_mean, d_std = dataset_stats(d.dataset)
            mean = list(d_mean) if mean is None else mean
            std = list(d_std) if std is None else std
        train_ds = build_classification_dataset(d.dataset, d.train_path, "train", crop, mean, std, train_augment=True,
                                                skip_corrupt=d.skip_corrupt, download=d.download)
        val_ds = build_classification_dataset(d.dataset, d.val_path, "val", crop, mean, std, train_augment=False,
                                              skip_corrupt=d.skip_corrupt, download=d.download)
        eval_tf = build_eval_transform(d.dataset, crop, mean, std)
        if train_ds.classes and val_ds.classes and list(train_ds.classes) != list(val_ds.classes):
            only_t = sorted(set(train_ds.classes) - set(val_ds.classes))[:5]
            only_v = sorted(set(val_ds.classes) - set(train_ds.classes))[:5]
            raise ConfigError(f"the classes of data.val_path '{d.val_path}' differ from those of data.train_path "
                              f"'{d.train_path}' (labels would not match): only in train {only_t}, only in val {only_v}")
        spec = DATASETS.get(d.dataset)
        num_classes = d.num_classes or spec.num_classes or len(train_ds.classes) or int(train_ds.targets.max()) + 1
        num_classes = int(num_classes)
        bad = int(max(train_ds.targets.max(), val_ds.targets.max()))
        if bad >= num_classes:
            raise ConfigError(f"data.num_classes={num_classes} but the data has label {bad} "
                              f"(train '{d.train_path}', val '{d.val_path}')")
        return train_ds, eval_tf, val_ds, num_classes, crop, mean, std

    def select_subset(self, source) -> np.ndarray:
        from harl.eval.subsets import class_balanced_subset, read_subset_list  # lazy: imports torchvision

        sub = self.cfg.subset
        if sub.file is not None:
            return read_subset_list(str(sub.file), source)
        if sub.per_class is not None:
            return class_balanced_subset(source.targets, per_class=int(sub.per_class), seed=int(sub.seed))
        return class_balanced_subset(source.targets, fraction=float(sub.fraction), seed=int(sub.seed))

    def _save_or_check_list(self, name: str, source, indices: np.ndarray, header: str) -> None:
        """Write a subset list, or check that an existing one (from an interrupted run) is identical."""
        from harl.eval.subsets import item_key, write_subset_list  # lazy: imports torchvision

        path = os.path.join(self.run_dir, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                old = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
            new = [item_key(source, int(i)) for i in indices]
            if old != new:
                raise RuntimeError(f"'{path}' (from an earlier run in this folder) differs from the subset selected "
                                   "now; the dataset changed. Move the folder away or set checkpoint.run_dir")
            return
        write_subset_list(path, source, indices, header=header)

    # -- the protocol ----------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        from harl.data import ClassificationDataset, SubsetSource  # lazy: imports torchvision
        from harl.eval.subsets import holdout_split, subset_summary  # lazy: imports torchvision

        c = self.cfg
        os.makedirs(self.run_dir, exist_ok=True)
        backbone, info = self.build_backbone()
        facts = _pretrain_facts(c.pretrained_feature_extractor)
        train_ds, eval_tf, val_ds, num_classes, crop, mean, std = self.data(info, facts)
        source = train_ds.source
        args = OmegaConf.to_container(c, resolve=True)
        args["resolved"] = {"backbone_name": info.get("backbone_name"), "backbone_kwargs": info.get("backbone_kwargs"),
                            "pretrain_method": info.get("method"), "crop_size": crop, "mean": mean, "std": std,
                            "num_classes": num_classes, "pretrained_sha256": info.get("sha256")}
        # the architecture actually built, so harl's loaders can rebuild finetuned.pth from this args.json
        args["backbone"] = {"name": info.get("backbone_name"), "kwargs": info.get("backbone_kwargs") or {}}
        args["pretrain_method"] = info.get("method")
        _write_json(os.path.join(self.run_dir, "args.json"), args)

        subset = self.select_subset(source)
        summary = subset_summary(source.targets, subset)
        hdr = (f"harl-finetune labelled subset of {c.data.dataset} '{c.data.train_path}': "
               f"fraction={c.subset.fraction} per_class={c.subset.per_class} file={c.subset.file} "
               f"seed={c.subset.seed} size={summary['size']}")
        self._save_or_check_list("subset_train.txt", source, subset, hdr)
        skip = bool(c.data.skip_corrupt)

        def labelled(idx, transform):
            return ClassificationDataset(SubsetSource(source, idx), transform, skip_corrupt=skip)

        common = dict(batch_size=int(c.optimizer.batch_size), momentum=float(c.optimizer.momentum),
                      nesterov=bool(c.optimizer.nesterov), schedule=str(c.scheduler.name),
                      warmup_epochs=int(c.scheduler.warmup_epochs),
                      accumulate_grad_batches=int(c.optimizer.accumulate_grad_batches), device=self.device,
                      precision=c.precision, num_workers=int(c.data.num_workers),
                      channels_last=bool(c.channels_last) and self.device.type == "cuda", progress=bool(c.progress))
        init_backbone = copy.deepcopy(backbone.state_dict())
        in_tf = self.input_transform(info)

        def fresh_model():
            backbone.load_state_dict(init_backbone)
            torch.manual_seed(int(c.seed))  # same head initialisation for every stage
            return FinetuneModel(backbone, num_classes, info.get("num_features"), in_tf)

        all_rows: List[Dict[str, Any]] = []
        search_rows: List[Dict[str, Any]] = []
        if c.optimizer.lr is not None:
            best_lr, best_wd = float(c.optimizer.lr), float(c.optimizer.weight_decay)
        else:
            tr_pos, ho_pos = holdout_split(source.targets[subset], float(c.search.holdout_fraction), int(c.subset.seed))
            tr_idx, ho_idx = subset[tr_pos], subset[ho_pos]
            self._save_or_check_list("subset_search_train.txt", source, tr_idx, hdr + " | search: train part")
            self._save_or_check_list("subset_holdout.txt", source, ho_idx, hdr + " | search: held-out part")
            search_train, holdout = labelled(tr_idx, train_ds.transform), labelled(ho_idx, eval_tf)
            epochs = int(c.search.max_epochs or c.max_epochs)
            for wd in c.search.weight_decay:
                for lr in c.search.lr:
                    name = stage_name(lr, wd)
                    res, rows = self._stage(name, fresh_model, search_train, holdout, epochs=epochs, lr=float(lr),
                                            weight_decay=float(wd), common=common)
                    search_rows.append({"lr": float(lr), "weight_decay": float(wd), "holdout_top1": res["top1"],
                                        "holdout_top5": res["top5"], "holdout_loss": res["loss"]})
                    all_rows.extend(rows)
            metric = "holdout_" + str(c.search.metric)
            # ties: the lower held-out loss, then the smaller lr / weight decay
            best = max(search_rows, key=lambda r: (r[metric], -r["holdout_loss"], -r["lr"], -r["weight_decay"]))
            best_lr, best_wd = best["lr"], best["weight_decay"]
        res, rows = self._stage("final", fresh_model, labelled(subset, train_ds.transform), val_ds,
                                epochs=int(c.max_epochs), lr=best_lr, weight_decay=best_wd, common=common,
                                keep_model=bool(c.save_model))
        all_rows.extend(rows)
        _write_csv(os.path.join(self.run_dir, "metrics.csv"), all_rows)

        results = {
            "mode": "finetune",
            "protocol": "semi_supervised" if summary["size"] < len(source) else "finetune_all_labels",
            "top1": res["top1"],
            "top5": res["top5"],
            "val_loss": res["loss"],
            "num_val": res["n"],
            "subset_label": subset_label(OmegaConf.to_container(c.subset), summary["size"], len(source)),
            "label_fraction": summary["size"] / len(source),
            "subset": {**OmegaConf.to_container(c.subset, resolve=True), **summary, "list": "subset_train.txt"},
            "lr": best_lr,
            "weight_decay": best_wd,
            "lr_source": "given" if c.optimizer.lr is not None else "search",
            "search": search_rows,
            "epochs": int(c.max_epochs),
            "batch_size": int(c.optimizer.batch_size) * int(c.optimizer.accumulate_grad_batches),
            "dataset": str(c.data.dataset),
            "num_classes": num_classes,
            "method": "random_init" if info.get("random_init") else info.get("method"),
            "pretrain_method": info.get("method"),
            "seed": facts.get("seed"),
            "finetune_seed": int(c.seed),
            "random_init": bool(info.get("random_init")),
            "pretrained": info.get("path"),
            "pretrained_sha256": info.get("sha256"),
            "pretrain_run": facts.get("pretrain_run"),
            "backbone": info.get("backbone_name"),
            "run_dir": self.run_dir,
        }
        _write_json(os.path.join(self.run_dir, "results.json"), results)
        return results

    def _stage(self, name: str, make_model, train_set, eval_set, *, epochs: int, lr: float, weight_decay: float,
               common: Dict[str, Any], keep_model: bool = False) -> Tuple[Dict[str, float], List[Dict[str, Any]]]:
        """Train + evaluate one stage, resuming / skipping from its folder."""
        sdir = os.path.join(self.run_dir, "stages", name)
        os.makedirs(sdir, exist_ok=True)
        done = _read_json(os.path.join(sdir, "result.json"))
        if done is not None and (not keep_model or os.path.isfile(os.path.join(self.run_dir, "finetuned.pth"))):
            return done["eval"], done["rows"]
        model = make_model()
        seed = int(self.cfg.seed)
        history = train_classifier(model, train_set, epochs=epochs, lr=lr, weight_decay=weight_decay, seed=seed,
                                   state_path=os.path.join(sdir, "state.pt"), desc=name, **common)
        ev = evaluate_classifier(model, eval_set, batch_size=common["batch_size"], num_workers=common["num_workers"],
                                 device=self.device, precision=common["precision"], progress=common["progress"],
                                 channels_last=common["channels_last"], desc=f"{name} eval")
        rows = [{"stage": name, "lr_base": lr, "weight_decay": weight_decay, **h} for h in history]
        rows[-1].update({"eval_top1": ev["top1"], "eval_top5": ev["top5"], "eval_loss": ev["loss"]})
        _write_csv(os.path.join(sdir, "metrics.csv"), rows)
        if keep_model:
            sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            atomic_torch_save(sd, os.path.join(self.run_dir, "finetuned.pth"))
        _write_json(os.path.join(sdir, "result.json"), {"eval": ev, "rows": rows, "lr": lr, "weight_decay": weight_decay})
        state = os.path.join(sdir, "state.pt")
        if os.path.exists(state):
            os.remove(state)  # the stage is finished; its result is in result.json
        return ev, rows


def run_finetune(cfg: Any, run_dir: Optional[str] = None) -> Dict[str, Any]:
    """Run the semi-supervised fine-tuning protocol for a config (see the module docstring);
    returns the results dict (also written to ``<run_dir>/results.json``)."""
    return FinetuneRunner(cfg, run_dir).run()


__all__ = ["FinetuneRunner", "run_finetune"]
