"""Makes the copy one destination receives: transcoded by Orthanc where it can, then the steps
(names, tags, site hook) on the dataset, then any encoding Orthanc cannot do (JPEG 2000).

The instance stored in Orthanc is never changed: the copy exists only on its way out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import UID

from orthanc_plugin.ports import Host, HostError
from orthanc_plugin.transform.coerce import CoercionError
from orthanc_plugin.transform.hooks import HookLimits, HookRefused, run_hook
from orthanc_plugin.transform.rename import Renamed, normalize_dataset
from orthanc_plugin.transform.spec import CoerceStep, CopySpec, HookStep, NormalizeStep
from orthanc_plugin.transform.syntax import Syntax, syntax_named

EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"


class CopyRefused(Exception):
    """The copy cannot be made (a hook refused or failed, a template gave an invalid value, a
    codec failed): the instance is not sent to that destination, with this reason."""


@dataclass
class MadeCopy:
    data: bytes
    syntax_uid: str
    changes: list[str] = field(default_factory=list)
    renamed: list[Renamed] = field(default_factory=list)


class CopyMaker:
    def __init__(self, host: Host, names_table: Callable[[Path | None], Any],
                 uid_key: Callable[[str], str] | None = None) -> None:
        self.host = host
        self.names_table = names_table
        # The site's keyed UID mapping (de-identification's), for coercions with `uids: keyed`.
        self.uid_key = uid_key

    def make(self, instance_id: str, spec: CopySpec) -> MadeCopy:
        syntax = syntax_named(spec.transfer_syntax)
        data = self._source(instance_id, syntax)
        if not spec.steps and (syntax is None or syntax.by_orthanc):
            return MadeCopy(data, _syntax_of(data))
        ds: Dataset = dcmread(BytesIO(data))
        made = MadeCopy(b"", "")
        for step in spec.steps:
            ds = self._step(ds, step, made)
        if syntax is not None and not syntax.by_orthanc:
            _encode(ds, syntax)
        made.data = _bytes(ds)
        made.syntax_uid = str(ds.file_meta.TransferSyntaxUID)
        return made

    def _source(self, instance_id: str, syntax: Syntax | None) -> bytes:
        """The stored file, transcoded by Orthanc when it can write the syntax asked for (it
        keeps the SOP Instance UID: the copy is the same instance, differently encoded)."""
        if syntax is None:
            return self.host.get_bytes(f"/instances/{instance_id}/file")
        wanted = syntax.uid if syntax.by_orthanc else EXPLICIT_LITTLE
        try:
            return self.host.post_for_bytes(
                f"/instances/{instance_id}/modify",
                {"Transcode": wanted, "Keep": ["SOPInstanceUID"], "Force": True})
        except HostError as error:
            if error.missing or error.unreachable:
                raise
            # Orthanc cannot decode this source (JPEG 2000 without a GDCM plugin): the worker
            # decodes it and writes the syntax itself.
            data = self.host.get_bytes(f"/instances/{instance_id}/file")
            ds = dcmread(BytesIO(data))
            _encode(ds, syntax)
            return _bytes(ds)

    def _step(self, ds: Dataset, step: object, made: MadeCopy) -> Dataset:
        if isinstance(step, NormalizeStep):
            table = self.names_table(step.site_synonyms)
            made.renamed.extend(normalize_dataset(ds, table, roi_names=step.roi_names,
                                                  plan_label=step.plan_label))
        elif isinstance(step, CoerceStep):
            try:
                made.changes.extend(step.coercion.apply(ds, self.uid_key))
            except CoercionError as error:
                raise CopyRefused(f"tag coercion: {error}") from None
        elif isinstance(step, HookStep):
            limits = HookLimits(seconds=step.seconds, memory_mb=step.memory_mb,
                                network=step.network)
            try:
                changed = run_hook(step.script, _bytes(ds), limits,
                                   allow_uid_change=step.changes_uid)
            except HookRefused as refusal:
                raise CopyRefused(f"hook {step.script.name}: {refusal}") from None
            made.changes.append(f"hook {step.script.name} applied")
            return dcmread(BytesIO(changed))
        return ds


def _encode(ds: Dataset, syntax: Syntax) -> None:
    """Writes `syntax` in the worker (what Orthanc's transcoder cannot). Objects without pixels
    (RTSTRUCT, RTPLAN) go as Explicit VR Little Endian: compression means nothing to them and
    planning systems expect them so."""
    try:
        if "PixelData" not in ds:
            ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_LITTLE)
            return
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)
        if UID(syntax.uid).is_compressed:
            ds.compress(syntax.uid, generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = UID(syntax.uid)
    except (RuntimeError, ValueError, NotImplementedError) as error:
        raise CopyRefused(f"cannot write {syntax.title}: {error}") from None


def _bytes(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _syntax_of(data: bytes) -> str:
    return str(dcmread(BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID)
