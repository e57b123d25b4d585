"""A user's Dataset or DataLoader streamed onto the device one batch at a time.

A :class:`Stream` stands where the engine and the applications hold an input
tensor ``x`` of shape ``(N, ...)``, and answers the few things they ask of it:

- ``len(x)``, ``x.shape``, ``x.device``, ``x.dtype``;
- ``x[index]`` with an integer tensor or list: those rows fetched from the
  dataset, collated and moved to the device (a metric batch, a minibatch, the
  continual memory): a new tensor, as a tensor's advanced indexing copies;
- ``x[a:b]`` and :meth:`Stream.subset`: a view, nothing fetched (as a tensor's
  slice is a view);
- :meth:`Stream.split` (as ``torch.split``): the rows in order, one chunk on the
  device at a time (evaluations, BatchNorm statistics, penalty-mode references);
- :meth:`Stream.to`: the same rows delivered on another device or dtype.

So only the batch or chunk being used is ever on the device; the dataset stays
where the user keeps it (a folder, a memory map, CPU tensors). What is still kept
whole, by choice (each small next to the inputs, or needed at every step):

- the labels: read once, in one pass over the dataset, and kept as one int64
  vector (8 bytes a row; :func:`stream_data`);
- continual's memory (``memory`` task-1 inputs, the metric batch of every step)
  and EWC's ``ewc_samples`` task-1 inputs; a fixed metric batch
  (``Path(..., resample=False)``);
- outputs, not inputs, where a method needs them on every row: penalty mode's
  f(pool; w0) and connect's label-free Bezier targets (softmax of both endpoints).

A map-style dataset is needed (``__getitem__`` and ``__len__``): the metric
batches are drawn at random rows with the path's seed, so a stream gives the
same batches, and the same figures, as tensors of the same rows. An
``IterableDataset`` has no random access and is refused in one sentence.
A dataset's random transforms (augmentation) are drawn afresh at every fetch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from geoviz.errors import ConfigError

__all__ = ["Stream", "stream_data", "subset", "rows_of", "accepted_stream", "held"]

# rows read at a time when the labels are gathered (a DataLoader's batch size when it has one)
LABEL_PASS_BATCH = 512


def _collate(items: list, collate_fn):
    if collate_fn is not None:
        return collate_fn(items)
    from torch.utils.data import default_collate

    return default_collate(items)


def _inputs_of(batch, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(inputs, labels or None) of a collated batch."""
    if isinstance(batch, (tuple, list)):
        if not 1 <= len(batch) <= 2:
            raise ConfigError(f"{what} yields items of {len(batch)} parts; give (input,) or (input, label).")
        x = batch[0]
        y = batch[1] if len(batch) == 2 else None
    else:
        x, y = batch, None
    x = torch.as_tensor(x) if isinstance(x, np.ndarray) else x
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{what} must hold tensors or numpy arrays, got {type(x).__name__}.")
    if y is not None and not isinstance(y, torch.Tensor):
        y = torch.as_tensor(y)
    return x, y


def _tensors_of(dataset) -> tuple[torch.Tensor, ...] | None:
    """The tensors of a TensorDataset (or a bare tensor of inputs), read by indexing: no per-item Python."""
    from torch.utils.data import TensorDataset

    if isinstance(dataset, torch.Tensor):
        return (dataset,)
    if type(dataset) is TensorDataset:
        return tuple(dataset.tensors)
    return None


class Stream:
    """Rows of a map-style Dataset, fetched onto ``device`` only when asked (see the module).

    Args:
        dataset: a ``torch.utils.data.Dataset`` with ``__getitem__`` and ``__len__``,
            items ``input`` or ``(input, label)``.
        device: where fetched rows are delivered.
        dtype: the inputs' dtype there (None: as the dataset gives them).
        rows: dataset indices this view covers, in order (None: all).
        collate_fn: how items become a batch (a DataLoader's, else ``default_collate``).
        what: the argument's name, for error messages.
        chunk: the most rows :meth:`split` puts on the device at once (a DataLoader's
            batch size; None: as many as asked).
    """

    def __init__(self, dataset, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 rows: torch.Tensor | None = None, collate_fn=None, what: str = "the data",
                 chunk: int | None = None, _item_shape: tuple[int, ...] | None = None, _item_dtype: torch.dtype | None = None):
        self.dataset = dataset
        self.device = torch.device(device)
        self.rows = rows
        self.collate_fn = collate_fn
        self.what = what
        self.chunk = chunk
        # a TensorDataset is read by indexing its tensors: no per-item Python
        self._tensors = _tensors_of(dataset)
        if _item_shape is None:
            probe, _ = self._collated([0] if rows is None else [int(rows[0])])
            _item_shape, _item_dtype = tuple(probe.shape[1:]), probe.dtype
        self._item_shape, self._item_dtype = _item_shape, _item_dtype
        self.dtype = dtype or _item_dtype

    # -- what a tensor answers ---------------------------------------------------
    def __len__(self) -> int:
        return len(self.dataset) if self.rows is None else int(self.rows.shape[0])

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self._item_shape))

    @property
    def ndim(self) -> int:
        return 1 + len(self._item_shape)

    def dim(self) -> int:
        return self.ndim

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def __repr__(self) -> str:
        return f"Stream({type(self.dataset).__name__}, rows={len(self)}, item={self._item_shape}, device={self.device})"

    def _view(self, rows: torch.Tensor | None, device=None, dtype=None) -> Stream:
        return Stream(self.dataset, device or self.device, dtype or self.dtype, rows, self.collate_fn, self.what,
                      self.chunk, self._item_shape, self._item_dtype)

    def to(self, *args, device=None, dtype=None, **kwargs) -> Stream:
        """The same rows delivered on another device and/or dtype (nothing is fetched; other
        keywords of ``Tensor.to``, such as ``non_blocking``, are accepted and ignored)."""
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            elif arg is not None:
                device = arg
        return self._view(self.rows, torch.device(device) if device is not None else None, dtype)

    def __getitem__(self, key):
        if isinstance(key, slice):
            positions = torch.arange(len(self))[key]
            return self._view(positions if self.rows is None else self.rows[positions])
        if isinstance(key, (int, np.integer)) or (isinstance(key, torch.Tensor) and key.ndim == 0):
            return self.take([int(key)])[0]  # one row, as a tensor's x[i]
        return self.take(key)

    # -- fetching ------------------------------------------------------------------
    def _dataset_rows(self, index) -> torch.Tensor:
        """Dataset indices of positions ``index`` of this view, (B,) int64 on the CPU."""
        if isinstance(index, torch.Tensor):
            index = index.detach().to("cpu", torch.long).reshape(-1)
        else:
            index = torch.as_tensor(np.asarray(index), dtype=torch.long).reshape(-1)
        n = len(self)
        if index.numel():
            low, high = torch.aminmax(index)
            if int(low) < 0:
                if int(low) < -n:
                    raise IndexError(f"{self.what}: row index out of range for {n} rows.")
                index = index % n
            if int(high) >= n:
                raise IndexError(f"{self.what}: row index out of range for {n} rows.")
        return index if self.rows is None else self.rows[index]

    def _collated(self, ids: torch.Tensor | list[int]):
        """(inputs, labels or None) of dataset rows ``ids``, on the CPU as the dataset gives them."""
        if self._tensors is not None:
            t = torch.as_tensor(ids, dtype=torch.long)
            return self._tensors[0][t], (self._tensors[1][t] if len(self._tensors) > 1 else None)
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        getitems = getattr(self.dataset, "__getitems__", None)
        items = getitems(ids) if getitems is not None else [self.dataset[i] for i in ids]
        return _inputs_of(_collate(list(items), self.collate_fn), self.what)

    def take(self, index) -> torch.Tensor:
        """Rows at positions ``index`` (an integer tensor or list) as one tensor on the device."""
        x, _ = self._collated(self._dataset_rows(index))
        return x.to(self.device, self.dtype)

    def subset(self, index) -> Stream:
        """A view of the rows at positions ``index`` (nothing is fetched)."""
        return self._view(self._dataset_rows(index))

    def split(self, size: int) -> Iterator[torch.Tensor]:
        """The rows in order, ``size`` at a time, each chunk on the device (as ``torch.split``).

        At most :attr:`chunk` rows at a time when set (a DataLoader's batch size):
        evaluations and BatchNorm statistics then go in batches of that size.
        """
        n = len(self)
        size = min(size, self.chunk or size)
        for start in range(0, n, size):
            yield self.take(torch.arange(start, min(start + size, n)))


def subset(x, index: torch.Tensor):
    """``x[index]`` for a tensor (a copy), a view for a :class:`Stream` (nothing fetched)."""
    if isinstance(x, Stream):
        return x.subset(index)
    return x[index.to(x.device)]


def _map_style(data, what: str):
    """(dataset, collate_fn, batch size) of a Dataset or DataLoader; ConfigError for what cannot stream."""
    from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler

    collate_fn, batch, chunk, workers = None, LABEL_PASS_BATCH, None, 0
    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset):
            data = data.dataset  # refused below, in the same words
        else:
            sampler = data.sampler
            if not isinstance(sampler, (SequentialSampler, RandomSampler)):
                raise ConfigError(
                    f"{what}'s DataLoader has its own sampler ({type(sampler).__name__}); geoviz draws its own "
                    "batches from every row of the dataset, so wrap the rows you mean in torch.utils.data.Subset."
                )
            if isinstance(sampler, RandomSampler) and (sampler.replacement or sampler.num_samples != len(data.dataset)):
                raise ConfigError(
                    f"{what}'s DataLoader samples with replacement or a number of rows of its own; give it a plain "
                    "Dataset (geoviz draws its own batches from every row)."
                )
            collate_fn = data.collate_fn
            batch = data.batch_size or LABEL_PASS_BATCH
            # its batch size caps the rows on the device at once; PyTorch's default, 1, is no choice
            chunk = data.batch_size if data.batch_size and data.batch_size > 1 else None
            workers = data.num_workers
            data = data.dataset
    if isinstance(data, IterableDataset):
        raise ConfigError(
            f"{what} is an IterableDataset, which has no random access for the metric batches; "
            "pass a map-style Dataset (with __getitem__ and __len__), a DataLoader over one, or tensors."
        )
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise ConfigError(f"{what} must be a Dataset with __getitem__ and __len__ to be streamed.")
    if len(data) == 0:
        raise ConfigError(f"{what} is empty.")
    from torch.utils.data import default_collate

    if collate_fn is default_collate:
        collate_fn = None
    return data, collate_fn, batch, chunk, workers


def stream_data(data, what: str, device: str | torch.device, dtype: torch.dtype | None) -> tuple[Stream, torch.Tensor | None]:
    """(inputs as a :class:`Stream`, labels or None) of a map-style Dataset or a DataLoader over one.

    The labels are read in one pass over the dataset (a DataLoader's batch size at
    a time, its collate_fn, its worker processes when it has ``num_workers``; its sampler's order is ignored, geoviz draws its own
    rows; a batch size above 1 caps the evaluation chunks, :meth:`Stream.split`) and kept as one int64 vector on the CPU; the inputs are checked on the
    way (floating point, one shape) and dropped. A TensorDataset's labels are its
    second tensor, read without a pass.

    Raises:
        ConfigError: an IterableDataset, a DataLoader with a custom sampler,
            inputs that are not floating point, labels that are not integers or
            that some rows lack.
    """
    dataset, collate_fn, batch, chunk, workers = _map_style(data, what)
    stream = Stream(dataset, device, None, None, collate_fn, what, chunk)
    if not stream._item_dtype.is_floating_point:
        raise ConfigError(f"{what}: inputs must be floating point, got {stream._item_dtype}.")
    if stream._tensors is not None:
        tensors = stream._tensors
        if len(tensors) > 2:
            raise ConfigError(f"{what} holds {len(tensors)} tensors; give (inputs,) or (inputs, labels).")
        y = tensors[1].reshape(-1) if len(tensors) == 2 else None
    else:
        labels: list[torch.Tensor] = []
        unlabelled = 0
        n = len(stream)
        if workers:  # the DataLoader's worker processes read the rows, in order
            from torch.utils.data import DataLoader

            loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers,
                                collate_fn=stream.collate_fn)
            batches = (_inputs_of(b, what) for b in loader)
        else:
            batches = (stream._collated(list(range(a, min(a + batch, n)))) for a in range(0, n, batch))
        for x, y in batches:
            if tuple(x.shape[1:]) != stream._item_shape:
                raise ConfigError(f"{what}: rows differ in shape ({tuple(x.shape[1:])} and {stream._item_shape}).")
            if y is None:
                unlabelled += x.shape[0]
            else:
                labels.append(y.reshape(-1))
        if labels and unlabelled:
            raise ConfigError(f"{what} yields labels with some rows and not others.")
        y = torch.cat(labels) if labels else None
    if y is not None:
        if y.is_floating_point() or y.dtype == torch.bool:
            raise ConfigError(f"{what}: labels must be integer class indices, got {y.dtype}.")
        if y.shape[0] != len(stream):
            raise ConfigError(f"{what}: {len(stream)} inputs but {y.shape[0]} labels.")
        y = y.long()
    return stream.to(dtype=dtype) if dtype is not None else stream, y


def accepted_stream(data) -> bool:
    """Whether ``data`` is a form that is streamed (a Dataset or DataLoader), not gathered."""
    from torch.utils.data import DataLoader
    from torch.utils.data import Dataset as TorchDataset

    return isinstance(data, (DataLoader, TorchDataset, Stream))


def rows_of(x: Stream | torch.Tensor, index: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of a tensor or a stream, as a tensor where ``x`` delivers."""
    if isinstance(x, Stream):
        return x.take(index)
    index = torch.as_tensor(index, dtype=torch.long)
    return x[index.to(x.device)]


def held(*inputs) -> str:
    """How a run's inputs came, for its record (config.json ``data``): ``streamed`` when any
    of them is a :class:`Stream` (fetched a batch or a chunk at a time), else ``in memory``."""
    return "streamed" if any(isinstance(x, Stream) for x in inputs) else "in memory"
