"""Which instance rules the stored-instance note alone can decide, and the facts it gives them.

The plugin's note carries Orthanc's metadata of a stored instance (calling and called AE, remote
IP, origin, SOP class), read in the callback at a map lookup each. A rule whose conditions read
only those, and whose actions are all forwards, can be decided and queued from the note before
the instance is described (one REST call per instance, plus the audit rows and the index): the
relay then starts as Orthanc's own Lua router does, and the recording follows off the critical
path. Everything else waits for the description, as before.
"""

from __future__ import annotations

from collections.abc import Mapping

from orthanc_plugin.rules.facts import InstanceFacts
from orthanc_plugin.rules.model import (
    AllOf,
    AnyOf,
    Condition,
    FactCondition,
    ForwardAction,
    Not,
    Rule,
    Trigger,
)

# Condition keys the note answers for an instance received over DICOM.
NOTE_KEYS = frozenset({"calling_aet", "called_aet", "remote_ip", "sop_class", "source", "modality"})
# Only instances received over DICOM: for one stored through the REST API the source may be an
# import folder, which only the importer's records tell (jobs/intake.py, source overrides).
DICOM_ORIGIN = "DicomProtocol"

# Storage SOP classes whose IOD fixes the Modality attribute to one enumerated value (PS3.3,
# each IOD's modality attribute description): for these the SOP class tells the modality without
# reading the file. Classes not listed (secondary capture, enhanced multi-modality objects,
# private classes) leave a rule that names a modality to the description.
MODALITY_BY_SOP_CLASS: Mapping[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2": "CT",          # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1": "CT",        # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.4": "MR",          # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1": "MR",        # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.128": "PT",        # Positron Emission Tomography Image
    "1.2.840.10008.5.1.4.1.1.130": "PT",        # Enhanced PET Image
    "1.2.840.10008.5.1.4.1.1.20": "NM",         # Nuclear Medicine Image
    "1.2.840.10008.5.1.4.1.1.481.1": "RTIMAGE",   # RT Image
    "1.2.840.10008.5.1.4.1.1.481.2": "RTDOSE",    # RT Dose
    "1.2.840.10008.5.1.4.1.1.481.3": "RTSTRUCT",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.481.4": "RTRECORD",  # RT Beams Treatment Record
    "1.2.840.10008.5.1.4.1.1.481.5": "RTPLAN",    # RT Plan
    "1.2.840.10008.5.1.4.1.1.481.6": "RTRECORD",  # RT Brachy Treatment Record
    "1.2.840.10008.5.1.4.1.1.481.7": "RTRECORD",  # RT Treatment Summary Record
    "1.2.840.10008.5.1.4.1.1.481.8": "RTPLAN",    # RT Ion Plan
    "1.2.840.10008.5.1.4.1.1.481.9": "RTRECORD",  # RT Ion Beams Treatment Record
    "1.2.840.10008.5.1.4.1.1.66.1": "REG",      # Spatial Registration
    "1.2.840.10008.5.1.4.1.1.66.3": "REG",      # Deformable Spatial Registration
}


def keys_read(condition: Condition) -> frozenset[str] | None:
    """The fact keys a condition tree reads, or None when it reads more than facts (a tag, the
    study's plan labels), which only the description can answer."""
    if isinstance(condition, FactCondition):
        return frozenset({condition.key})
    if isinstance(condition, AllOf):
        return _union(condition.conditions)
    if isinstance(condition, AnyOf):
        return _union(condition.options)
    if isinstance(condition, Not):
        return keys_read(condition.condition)
    return None


def _union(conditions: tuple[Condition, ...]) -> frozenset[str] | None:
    keys: frozenset[str] = frozenset()
    for inner in conditions:
        read = keys_read(inner)
        if read is None:
            return None
        keys |= read
    return keys


def decidable_at_arrival(rule: Rule) -> bool:
    """An enabled instance rule that forwards only (no approval, no derivation: those need the
    study) and reads only what a note can carry."""
    if not rule.enabled or rule.on != Trigger.INSTANCE or not rule.actions:
        return False
    if not all(isinstance(action, ForwardAction) for action in rule.actions):
        return False
    keys = keys_read(rule.match)
    return keys is not None and keys <= NOTE_KEYS


def arrival_facts(instance_id: str, note: Mapping[str, str]) -> InstanceFacts | None:
    """The facts a note gives, or None when the note cannot stand for the description (not
    received over DICOM, or no SOP class noted)."""
    if note.get("origin") != DICOM_ORIGIN or not note.get("sop_class_uid"):
        return None
    sop_class = note["sop_class_uid"]
    return InstanceFacts(
        instance_id=instance_id,
        calling_aet=note.get("calling_aet", ""),
        called_aet=note.get("called_aet", ""),
        remote_ip=note.get("remote_ip", ""),
        source="DICOM",
        modality=MODALITY_BY_SOP_CLASS.get(sop_class, ""),
        sop_class_uid=sop_class,
    )


def answers(rule: Rule, facts: InstanceFacts) -> bool:
    """Whether these note facts answer every condition of the rule (a rule naming a modality needs
    a SOP class whose IOD fixes it)."""
    keys = keys_read(rule.match)
    if keys is None or not keys <= NOTE_KEYS:
        return False
    return "modality" not in keys or bool(facts.modality)
