"""What the PS3.15 Annex E Basic Application Level Confidentiality Profile does to each attribute.

A subset of Table E.1-1 covering the attributes radiotherapy objects carry, each with its basic
action and the option that relaxes it. model.py adds safety nets for what no table lists: every
person name, every date and time, and free text that repeats the patient's identifiers.
"""

from __future__ import annotations

from enum import StrEnum


class Option(StrEnum):
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain-longitudinal-modified-dates"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"
    CLEAN_DESCRIPTORS = "clean-descriptors"
    RETAIN_UIDS = "retain-uids"
    # The gateway's own (no CID 7050 code): scrub the patient's name words from clinical labels
    # too (ROI names, plan and beam labels), for a site whose labels carry patient names.
    SCRUB_CLINICAL_LABELS = "scrub-clinical-labels"


class Profile(StrEnum):
    PARTIAL = "partial"   # PatientID from a pattern, AccessionNumber removed (NETRT's partial)
    FULL = "full"         # the basic profile with the options a rule switches on


# CID 7050 "De-identification Method" codes (scheme DCM) recorded in the output.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
OPTION_CODES = {
    Option.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: (
        "113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    Option.RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
    Option.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    Option.RETAIN_UIDS: ("113110", "Retain UIDs Option"),
    Option.RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
}

# UIDs that name a kind of thing (a SOP class, a transfer syntax, a coding scheme), not a
# patient's object: they are kept or the receiver could no longer read the object.
CLASS_UID_KEYWORDS = frozenset({
    "SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
    "AffectedSOPClassUID", "RequestedSOPClassUID", "ReferencedSOPClassUIDInFile",
    "ImplementationClassUID", "CodingSchemeUID", "ContextGroupExtensionCreatorUID",
    "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID", "SOPClassesInStudy",
    "ReferencedTransferSyntaxUIDInFile", "PrivateInformationCreatorUID",
    "SOPClassesSupported", "MappingResourceUID", "ContextUID",
})

# Basic actions: X remove, Z empty, K keep, C kept only when descriptors are cleaned, T date or
# time (shifted with the longitudinal option, else emptied), P/N the patient's pseudonym.
# The second value is the option that keeps the attribute.
_P = Option.RETAIN_PATIENT_CHARACTERISTICS
_D = Option.RETAIN_DEVICE_IDENTITY
_I = Option.RETAIN_INSTITUTION_IDENTITY
_C = Option.CLEAN_DESCRIPTORS

ACTIONS: dict[str, tuple[str, Option | None]] = {
    # patient
    "PatientName": ("N", None), "PatientID": ("P", None), "IssuerOfPatientID": ("X", None),
    "IssuerOfPatientIDQualifiersSequence": ("X", None),
    "PatientBirthDate": ("Z", None), "PatientBirthTime": ("X", None),
    "PatientSex": ("Z", _P), "PatientAge": ("X", _P), "PatientSize": ("X", _P),
    "PatientWeight": ("X", _P), "EthnicGroup": ("X", _P), "SmokingStatus": ("X", _P),
    "PregnancyStatus": ("X", _P), "PatientSexNeutered": ("X", _P),
    "LastMenstrualDate": ("X", _P), "PatientSizeCodeSequence": ("X", _P),
    "PatientAddress": ("X", None), "PatientMotherBirthName": ("X", None),
    "OtherPatientIDs": ("X", None), "OtherPatientNames": ("X", None),
    "OtherPatientIDsSequence": ("X", None), "PatientBirthName": ("X", None),
    "PatientTelephoneNumbers": ("X", None), "Occupation": ("X", _C),
    "AdditionalPatientHistory": ("X", _C), "PatientComments": ("X", _C),
    "MedicalRecordLocator": ("X", None), "MilitaryRank": ("X", None),
    "BranchOfService": ("X", None), "CountryOfResidence": ("X", None),
    "RegionOfResidence": ("X", None), "PatientReligiousPreference": ("X", None),
    "PatientInsurancePlanCodeSequence": ("X", None),
    "PatientPrimaryLanguageCodeSequence": ("X", None), "ResponsiblePerson": ("X", None),
    "ResponsibleOrganization": ("X", None), "MedicalAlerts": ("X", None),
    "Allergies": ("X", None), "SpecialNeeds": ("X", None), "PatientState": ("X", None),
    "PatientTransportArrangements": ("X", None), "PatientInstitutionResidence": ("X", None),
    "ReferencedPatientSequence": ("X", None), "ReferencedPatientPhotoSequence": ("X", None),
    "CurrentPatientLocation": ("X", None), "PatientAlternativeCalendar": ("X", None),
    "PatientBirthDateInAlternativeCalendar": ("X", None),
    "PatientDeathDateInAlternativeCalendar": ("X", None),
    # study, visit, request
    "AccessionNumber": ("Z", None), "StudyID": ("Z", None),
    "IssuerOfAccessionNumberSequence": ("X", None),
    "ReferringPhysicianName": ("Z", None), "ReferringPhysicianAddress": ("X", None),
    "ReferringPhysicianTelephoneNumbers": ("X", None),
    "ReferringPhysicianIdentificationSequence": ("X", None),
    "StudyDescription": ("X", _C), "PhysiciansOfRecord": ("X", None),
    "PhysiciansOfRecordIdentificationSequence": ("X", None),
    "NameOfPhysiciansReadingStudy": ("X", None),
    "PhysiciansReadingStudyIdentificationSequence": ("X", None),
    "RequestingPhysician": ("X", None), "RequestingService": ("X", None),
    "RequestedProcedureDescription": ("X", _C), "RequestedProcedureID": ("X", None),
    "AdmittingDiagnosesDescription": ("X", _C), "AdmittingDiagnosesCodeSequence": ("X", _C),
    "AdmissionID": ("X", None), "IssuerOfAdmissionID": ("X", None),
    "ReferencedStudySequence": ("X", None), "RequestAttributesSequence": ("X", None),
    "ConsultingPhysicianName": ("X", None), "StudyComments": ("X", _C),
    "ReasonForStudy": ("X", _C), "ReasonForTheRequestedProcedure": ("X", _C),
    "PlacerOrderNumberImagingServiceRequest": ("X", None),
    "FillerOrderNumberImagingServiceRequest": ("X", None),
    "ScheduledProcedureStepID": ("X", None), "ScheduledProcedureStepDescription": ("X", _C),
    "ScheduledPerformingPhysicianName": ("X", None), "ServiceEpisodeID": ("X", None),
    "ServiceEpisodeDescription": ("X", None), "VisitComments": ("X", _C),
    # series, acquisition
    # OperatorsName is Type 2 in the RT Series module: emptied, not removed (PS3.15 X/Z).
    "SeriesDescription": ("X", _C), "ProtocolName": ("X", _C), "OperatorsName": ("Z", None),
    "OperatorIdentificationSequence": ("X", None), "PerformingPhysicianName": ("X", None),
    "PerformingPhysicianIdentificationSequence": ("X", None),
    "PerformedProcedureStepID": ("X", None), "PerformedProcedureStepDescription": ("X", _C),
    "PerformedLocation": ("X", None), "PerformedStationName": ("X", _D),
    "PerformedStationAETitle": ("X", _D), "ImageComments": ("X", _C),
    "FrameComments": ("X", _C), "DerivationDescription": ("X", _C),
    "AcquisitionComments": ("X", _C), "ContrastBolusAgent": ("Z", _C),
    "ReferencedPerformedProcedureStepSequence": ("X", None),
    "RequestedProcedureCodeSequence": ("X", _C), "PerformedProtocolCodeSequence": ("X", _C),
    "ContentCreatorName": ("Z", None), "VerifyingObserverName": ("Z", None),
    "VerifyingOrganization": ("X", None), "PersonName": ("X", None),
    "PersonAddress": ("X", None), "PersonTelephoneNumbers": ("X", None),
    "TextComments": ("X", _C), "TopicSubject": ("X", None), "TopicAuthor": ("X", None),
    "Arbitrary": ("X", None), "Authorization": ("X", None), "DigitalSignaturesSequence": ("X", None),
    "OriginalAttributesSequence": ("X", None), "ModifiedAttributesSequence": ("X", None),
    "DataSetTrailingPadding": ("X", None),
    # equipment and institution
    "InstitutionName": ("X", _I), "InstitutionAddress": ("X", _I),
    "InstitutionalDepartmentName": ("X", _I), "InstitutionCodeSequence": ("X", _I),
    "InstitutionalDepartmentTypeCodeSequence": ("X", _I),
    "StationName": ("X", _D), "DeviceSerialNumber": ("X", _D), "DetectorID": ("X", _D),
    "GantryID": ("X", _D), "PlateID": ("X", _D), "CassetteID": ("X", _D),
    "GeneratorID": ("X", _D), "DeviceDescription": ("X", _D), "DeviceLabel": ("X", _D),
    "SourceSerialNumber": ("X", _D), "SoftwareVersions": ("X", _D),
    "UniqueDeviceIdentifier": ("X", _D), "ManufacturerDeviceIdentifier": ("X", _D),
    # radiotherapy
    "RTPlanName": ("X", _C), "RTPlanDescription": ("X", _C), "StructureSetName": ("X", _C),
    "StructureSetDescription": ("X", _C), "ROIGenerationDescription": ("X", _C),
    # ReviewerName is Type 2C (Approval module) once a structure set or plan is APPROVED.
    "ROIInterpreter": ("Z", None), "ReviewerName": ("Z", None),
    "FractionGroupDescription": ("X", _C), "DoseReferenceDescription": ("X", _C),
    "PrescriptionDescription": ("X", _C), "BeamDescription": ("X", _C),
    "SetupTechniqueDescription": ("X", _C), "RTImageDescription": ("X", _C),
    "TreatmentSites": ("X", _C),
}

# Labels that identify the treatment, not the patient: the free-text safety net leaves them as
# they are (a patient called ...^Breast keeps an ROI named Breast), unless the whole value is an
# identifier of the patient (a structure set labelled with the StudyID) or the rule asks for
# scrub-clinical-labels.
CLINICAL_LABEL_KEYWORDS = frozenset({
    "ROIName", "ROIObservationLabel", "RTPlanLabel", "BeamName", "StructureSetLabel",
    "ToleranceTableLabel", "PatientSetupLabel", "ApplicationSetupName", "BlockName",
    "CompensatorID", "FixationLabel", "ShieldingDeviceLabel", "BrachyAccessoryDeviceName",
    "SourceApplicatorName",
})
# Type 1 labels cannot be emptied: an identifier found as the whole value becomes this.
LABEL_PLACEHOLDER = "DEIDENTIFIED"
TYPE1_LABELS = frozenset({"RTPlanLabel", "StructureSetLabel", "ROIName"})

# Descriptors that the clean-descriptors option keeps once the patient's identifiers are removed.
DESCRIPTOR_KEYWORDS = frozenset(k for k, (_, option) in ACTIONS.items() if option is _C)
