"""The data path of store-based distillation: an FSL dataset whose instances carry the teacher's
top-k ids and log-probs aligned with their tokens, a collator that keeps them (OLMo-core's drops
unknown fields) and a data-loader config that builds that collator itself.

Instance ``i`` of OLMo-core's FSL dataset is ``tokens[j * L:(j + 1) * L]`` of one file; its teacher
entries are store positions ``file_start + j * L`` onwards. The store is checked against the
dataset (tokenizer, token-file fingerprints, sequence length, k) when the dataset is built, i.e.
before training starts.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
from olmo_core.data import DataCollator, NumpyDataLoaderConfig, NumpyFSLDatasetConfig
from olmo_core.data.numpy_dataset import NumpyFSLDataset

from ..data.tokens import TokenFiles
from ..errors import UserError
from .topk_store import TopKStore

__all__ = [
    "TEACHER_IDS",
    "TEACHER_LOGPROBS",
    "TopKFSLDataset",
    "TopKFSLDatasetConfig",
    "TopKCollator",
    "KDDataLoaderConfig",
]

TEACHER_IDS = "teacher_ids"
TEACHER_LOGPROBS = "teacher_logprobs"


class TopKFSLDataset(NumpyFSLDataset):
    """OLMo-core's FSL dataset plus ``teacher_ids`` (L, k) int64 and ``teacher_logprobs`` (L, k)
    float32 per instance, read from a :class:`TopKStore`."""

    def __init__(self, *paths, topk_store: str, top_k: Optional[int] = None, **kwargs):
        super().__init__(*paths, **kwargs)
        self.topk_store_path = topk_store
        self.top_k = top_k
        self._store: Optional[TopKStore] = None
        self._file_starts: Optional[List[int]] = None

    @property
    def store(self) -> TopKStore:
        if self._store is None:
            self._store = TopKStore(self.topk_store_path)
        return self._store

    def validate_store(self, tokenizer=None) -> None:
        """Check the store against this dataset and map each token file to its store position."""
        files = TokenFiles([str(p) for p in self.paths], self.dtype)
        self.store.check_compatible(
            token_files=files.fingerprint(),
            sequence_length=self.sequence_length,
            tokenizer=tokenizer,
            k=self.top_k,
        )
        start_of = dict(zip(files.paths, self.store.file_offsets()))
        self._file_starts = [int(start_of[str(p)]) for p in self.paths]

    def store_position(self, index: int) -> int:
        """Store position of the first token of instance ``index``."""
        if self._file_starts is None:
            self.validate_store()
        assert self._file_starts is not None
        index = int(index) if index >= 0 else len(self) + int(index)
        starts = [start for start, _ in self.offsets]
        f = bisect.bisect_right(starts, index) - 1
        return self._file_starts[f] + (index - starts[f]) * self.sequence_length

    def __getitem__(self, index: int) -> Dict[str, Any]:
        out = super().__getitem__(index)
        ids, lps = self.store.read(self.store_position(index), self.sequence_length)
        out[TEACHER_IDS] = torch.from_numpy(ids)
        out[TEACHER_LOGPROBS] = torch.from_numpy(lps)
        return out


@dataclass(kw_only=True)
class TopKFSLDatasetConfig(NumpyFSLDatasetConfig):
    """:class:`NumpyFSLDatasetConfig` plus the teacher's top-k store for these token files."""

    topk_store: str
    top_k: Optional[int] = None
    """Expected k (checked against the store); ``None`` takes the store's."""

    def build(self) -> TopKFSLDataset:  # type: ignore[override]
        """Mirrors OLMo-core 3.0 ``NumpyFSLDatasetConfig.build`` (its plain-paths branch, with
        the same arguments); changed: the dataset is a :class:`TopKFSLDataset` whose store is
        checked against the tokenizer, and a source mixture is refused (a store is aligned with
        token files)."""
        self.validate()
        if self.source_mixture_config is not None:
            raise UserError(
                "a top-k store is aligned with token files, not with a source mixture; "
                "give the dataset `paths` instead of `source_mixture_config`"
            )
        paths, metadata, label_masks = self._resolve_paths_metadata(
            allow_mix=True, label_mask_paths=self.label_mask_paths
        )
        dataset = TopKFSLDataset(
            *paths,
            topk_store=self.topk_store,
            top_k=self.top_k,
            sequence_length=self.sequence_length,
            max_target_sequence_length=self.max_target_sequence_length,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            vocab_size=self.tokenizer.vocab_size,
            dtype=self.get_dtype(),
            metadata=metadata,
            include_instance_metadata=self.include_instance_metadata,
            generate_doc_lengths=self.generate_doc_lengths,
            bos_token_id=self.tokenizer.bos_token_id,
            instance_filter_config=self.instance_filter_config,
            label_mask_paths=label_masks,
        )
        dataset.validate_store(self.tokenizer)
        self._finalize(dataset)
        return dataset


@dataclass
class TopKCollator(DataCollator):
    """OLMo-core's collator that also stacks ``teacher_ids`` and ``teacher_logprobs``."""

    def __call__(self, items: Sequence[Any]) -> Dict[str, Any]:  # type: ignore[override]
        out = super().__call__(items)
        if items and isinstance(items[0], dict) and TEACHER_IDS in items[0]:
            length = out["input_ids"].shape[1]
            if any(len(x[TEACHER_IDS]) != length for x in items):
                raise UserError(
                    "instances of different lengths cannot carry teacher top-k entries; use a "
                    "fixed-sequence-length dataset (TopKFSLDatasetConfig)"
                )
            out[TEACHER_IDS] = torch.stack([x[TEACHER_IDS] for x in items])
            out[TEACHER_LOGPROBS] = torch.stack([x[TEACHER_LOGPROBS] for x in items])
        return out


@dataclass
class KDDataLoaderConfig(NumpyDataLoaderConfig):
    """OLMo-core's data-loader config whose ``build`` uses :class:`TopKCollator`."""

    def build(self, dataset, *, collator=None, mesh=None, dp_process_group=None):  # type: ignore[override]
        collator = collator or TopKCollator(
            pad_token_id=dataset.pad_token_id, vocab_size=dataset.vocab_size
        )
        return super().build(
            dataset, collator=collator, mesh=mesh, dp_process_group=dp_process_group
        )
