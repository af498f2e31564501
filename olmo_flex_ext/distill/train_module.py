"""The distillation train module: OLMo-core's ``TransformerTrainModule`` with the KD loss.

Teacher predictions come from the batch (``teacher_ids`` / ``teacher_logprobs`` from a
:class:`~olmo_flex_ext.distill.data.TopKFSLDataset`) or, with ``online_teacher``, from a teacher
model held by this module and run on each micro-batch (:func:`teacher_topk`, no store). The loss
is :func:`topk_kd_loss` per micro-batch on that micro-batch's logits only, divided by the batch's
predicted-token count like OLMo-core's CE; the MoE auxiliary losses attach through autograd as in
the stock module. Logged: ``train/KD loss`` (the objective), ``train/KL``, ``train/CE loss``
(and perplexity), ``train/top-1 agreement``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
import torch.distributed.checkpoint.state_dict as dist_cp_sd
from olmo_core.config import DType
from olmo_core.data.utils import get_labels, split_batch
from olmo_core.distributed.utils import get_local_tensor
from olmo_core.nn.transformer import Transformer
from olmo_core.train.common import ReduceType
from olmo_core.train.train_module import TransformerTrainModule, TransformerTrainModuleConfig
from olmo_core.utils import move_to_device

from ..checkpoint import load_model
from ..errors import UserError
from .data import TEACHER_IDS, TEACHER_LOGPROBS, TopKFSLDataset
from .generate import teacher_identity, teacher_topk
from .loss import KDLossConfig, topk_kd_loss

__all__ = ["KDTrainModule", "KDTrainModuleConfig", "KD_METRICS"]

KD_METRICS = ("train/KD loss", "train/KL", "train/top-1 agreement")

_KD_FIELDS = ("kd", "teacher_path", "online_teacher", "teacher_top_k", "teacher_dtype")


class KDTrainModule(TransformerTrainModule):
    """:class:`TransformerTrainModule` whose loss is knowledge distillation (plus optional CE)."""

    def __init__(
        self,
        model: Transformer,
        *,
        kd: KDLossConfig,
        teacher_path: Optional[str] = None,
        online_teacher: bool = False,
        teacher_top_k: int = 128,
        teacher_dtype: Optional[torch.dtype] = None,
        **kwargs: Any,
    ):
        kd.validate()
        if kwargs.get("z_loss_multiplier") is not None:
            raise UserError("z_loss_multiplier is not supported with distillation; leave it unset")
        super().__init__(model, **kwargs)
        self.kd = kd
        self.teacher_path = teacher_path
        self.online_teacher = online_teacher
        self.teacher_top_k = teacher_top_k
        self.teacher: Optional[Transformer] = None
        if online_teacher:
            if not teacher_path:
                raise UserError("online_teacher=True needs teacher_path (the teacher checkpoint)")
            self.teacher = load_model(teacher_path, device=self.device, dtype=teacher_dtype)
            self.teacher.requires_grad_(False)
        self._k: Optional[int] = teacher_top_k if online_teacher else None

    # ---- checks before training ----------------------------------------------------------

    def pre_train(self):
        super().pre_train()
        vocab = self.model.vocab_size
        if self.teacher is not None:
            if self.teacher.vocab_size != vocab:
                raise UserError(
                    f"teacher {self.teacher_path} has a vocabulary of {self.teacher.vocab_size} "
                    f"but the student has {vocab}; they must match"
                )
            if not 1 <= self.teacher_top_k <= vocab:
                raise UserError(f"teacher_top_k must be in [1, {vocab}], got {self.teacher_top_k}")
            return
        dataset = self.trainer.data_loader.dataset
        if not isinstance(dataset, TopKFSLDataset):
            raise UserError(
                "distillation from a store needs the top-k dataset and data loader "
                "(TopKFSLDatasetConfig + KDDataLoaderConfig, see distill.with_distillation), "
                "or set train_module.online_teacher=true with a teacher_path"
            )
        store = dataset.store
        if store.vocab_size != vocab:
            raise UserError(
                f"top-k store {store.path} holds log-probs over a vocabulary of "
                f"{store.vocab_size:,d} but the student has {vocab:,d}; they must match"
            )
        if self.teacher_path:
            made_from, ours = (
                store.teacher.get("weights_sha256"),
                teacher_identity(self.teacher_path),
            )
            if made_from != ours["weights_sha256"]:
                raise UserError(
                    f"top-k store {store.path} was made from teacher "
                    f"{store.teacher.get('path')}, not from teacher_path {self.teacher_path} (their "
                    "weights differ); regenerate the store or fix teacher_path"
                )
        self._k = store.k

    # ---- training ------------------------------------------------------------------------

    def _teacher_predictions(
        self, input_ids: torch.Tensor, kwargs: Dict[str, Any], dry_run: bool
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        ids, lps = kwargs.pop(TEACHER_IDS, None), kwargs.pop(TEACHER_LOGPROBS, None)
        if self.teacher is not None:  # online: the teacher runs on this micro-batch
            doc = {k: kwargs[k] for k in ("doc_lens", "max_doc_lens") if k in kwargs}
            with self._model_forward_context():
                return teacher_topk(
                    self.teacher, move_to_device(input_ids, self.device), self.teacher_top_k, **doc
                )
        if ids is not None and lps is not None:
            return move_to_device(ids, self.device), move_to_device(lps, self.device)
        if dry_run:  # OLMo-core's dry-run batch has only input ids: any distinct ids will do
            V = self.model.vocab_size
            k = min(self._k or 8, V)
            shift = torch.randint(0, V, (*input_ids.shape, 1), device=self.device)
            ids = (torch.arange(k, device=self.device) + shift) % V
            lps = torch.log_softmax(torch.randn(*ids.shape, device=self.device), -1)
            return ids, lps
        raise UserError(
            "the batch has no teacher top-k entries; use TopKFSLDatasetConfig with "
            "KDDataLoaderConfig, or online_teacher=true"
        )

    def train_batch(self, batch: Dict[str, Any], dry_run: bool = False):
        """One batch: forward, KD loss and backward per micro-batch.

        Mirrors OLMo-core 3.0 ``TransformerTrainModule.train_batch`` (which has no hook for
        another loss): the same labels, token count (instance-mask tokens included), micro-batch
        split, micro-batch context and auxiliary metrics. Changed: the model returns logits and
        :func:`topk_kd_loss` computes the loss from them and the teacher's top-k (from the batch
        or the online teacher); metrics are the KD ones; the ``masked labels`` / ``masked
        instances`` metrics are not recorded; the z-loss is refused in ``__init__``; a skip-step
        optimizer gets no batch loss (use a plain optimizer such as AdamW).
        """
        self._set_model_mode("train")
        if "labels" not in batch:
            batch["labels"] = get_labels(batch, label_ignore_index=self.label_ignore_index)
        num_tokens = move_to_device((batch["labels"] != self.label_ignore_index).sum(), self.device)
        if (instance_mask := batch.get("instance_mask")) is not None:  # as OLMo-core counts them
            num_tokens = num_tokens + move_to_device(
                (~instance_mask).sum() * batch["labels"].shape[1], self.device
            )
        if self.rank_microbatch_size < (seq_len := batch["input_ids"].shape[1]):
            raise RuntimeError(
                f"Microbatch size ({self.rank_microbatch_size}) is smaller than the sequence "
                f"length ({seq_len})"
            )
        micro_batches = split_batch(batch, self.rank_microbatch_size // seq_len)
        del batch
        # objective, KL, CE, top-1 agreements: sums over the batch's predicted tokens
        totals = torch.zeros(4, device=self.device)
        for i, micro_batch in enumerate(micro_batches):
            with self._train_microbatch_context(i, len(micro_batches)):
                input_ids, labels, kwargs = self._prepare_batch(micro_batch)
                t_ids, t_lps = self._teacher_predictions(input_ids, kwargs, dry_run)
                logits = self.model_forward(
                    input_ids, labels=None, loss_div_factor=num_tokens, **kwargs
                )
                assert isinstance(logits, torch.Tensor)
                out = topk_kd_loss(
                    get_local_tensor(logits),
                    t_ids,
                    t_lps,
                    move_to_device(labels, self.device),
                    self.kd,
                    ignore_index=self.label_ignore_index,
                )
                del logits
                (out.loss / num_tokens).backward()
                totals += torch.stack(
                    [out.loss.detach(), out.kl, out.ce, out.agree.to(totals.dtype)]
                ).to(totals.dtype)

        self.model.post_batch(dry_run=dry_run)
        if dry_run:
            self.model.reset_auxiliary_metrics()
            return

        totals = totals / num_tokens
        self.record_metric("train/KD loss", totals[0], ReduceType.mean)
        self.record_metric("train/KL", totals[1], ReduceType.mean)
        self.record_ce_loss(totals[2], ReduceType.mean)
        self.record_metric("train/top-1 agreement", totals[3], ReduceType.mean)
        for name, (value, reduction) in self.model.compute_auxiliary_metrics(reset=True).items():
            self.record_metric(name, value, reduction, namespace="train")


@dataclass
class KDTrainModuleConfig(TransformerTrainModuleConfig):
    """:class:`TransformerTrainModuleConfig` for :class:`KDTrainModule`."""

    kd: KDLossConfig = field(default_factory=KDLossConfig)
    teacher_path: Optional[str] = None
    """The teacher checkpoint: run online with ``online_teacher``; with a store, the store must
    have been made from it (checked before training)."""
    online_teacher: bool = False
    teacher_top_k: int = 128
    """k of the online teacher (a store has its own)."""
    teacher_dtype: Optional[DType] = None
    """Online teacher weights (default float32)."""

    def build(  # type: ignore[override]
        self, model: Transformer, device: Optional[torch.device] = None, eval_only: bool = False
    ) -> KDTrainModule:
        """Mirrors OLMo-core 3.0 ``TransformerTrainModuleConfig.build`` (the same conversion of
        the config's fields into keyword arguments); changed: the KD fields go to
        :class:`KDTrainModule` and pipeline parallelism is refused."""
        if self.pp_config is not None:
            raise UserError("pipeline parallelism is not supported with distillation")
        kwargs = self.as_dict(exclude_none=True, recurse=False)
        for name in _KD_FIELDS:
            kwargs.pop(name, None)
        if (autocast := kwargs.pop("autocast_precision", None)) is not None:
            kwargs["autocast_precision"] = DType(autocast).as_pt()
        for key in ("state_dict_save_opts", "state_dict_load_opts"):
            if (opts := kwargs.pop(key, None)) is not None:
                kwargs[key] = dist_cp_sd.StateDictOptions(**opts)
        return KDTrainModule(
            model=model,
            device=device,
            eval_only=eval_only,
            kd=self.kd,
            teacher_path=self.teacher_path,
            online_teacher=self.online_teacher,
            teacher_top_k=self.teacher_top_k,
            teacher_dtype=DType(self.teacher_dtype).as_pt() if self.teacher_dtype else None,
            **kwargs,
        )
