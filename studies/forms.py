"""HTML forms: input validation only; the rules of the domain live in the services."""

from django import forms
from django.contrib.auth.forms import AuthenticationForm, PasswordChangeForm

from studies.errors import ApplicationError
from studies.models import BodyPart, Label, ReviewDecision, Sex, StudyStatus

YES_NO_ANY = [("", "Any"), ("yes", "Yes"), ("no", "No")]


class BootstrapMixin:
    """Gives every widget Bootstrap's class and links errors and help to the control for screen readers."""

    def _style_fields(self) -> None:
        for name, field in self.fields.items():
            widget = field.widget
            if isinstance(widget, forms.CheckboxInput | forms.RadioSelect):
                css = "form-check-input"
            elif isinstance(widget, forms.Select):
                css = "form-select"
            else:
                css = "form-control"
            widget.attrs["class"] = f"{widget.attrs.get('class', '')} {css}".strip()
            if self.is_bound and name in self.errors:
                widget.attrs["class"] += " is-invalid"
                widget.attrs["aria-invalid"] = "true"
                widget.attrs["aria-describedby"] = f"id_{name}_error"

    def full_clean(self) -> None:
        super().full_clean()
        self._style_fields()

    def add_application_error(self, error: ApplicationError) -> None:
        """Shows a service's error: under the matching fields, else at the top of the form."""
        if not error.extra:
            self.add_error(None, error.message)
        for field, messages in error.extra.items():
            self.add_error(field if field in self.fields else None, messages)
        self._style_fields()


class LoginForm(BootstrapMixin, AuthenticationForm):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._style_fields()


class StaffPasswordChangeForm(BootstrapMixin, PasswordChangeForm):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._style_fields()


class WorklistFilterForm(BootstrapMixin, forms.Form):
    q = forms.CharField(
        label="Search",
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "MRN, name or accession", "type": "search"}),
    )
    body_part = forms.ChoiceField(label="Body part", required=False, choices=[("", "Any"), *BodyPart.choices])
    status = forms.ChoiceField(label="Status", required=False, choices=[("", "Any"), *StudyStatus.choices])
    flagged = forms.ChoiceField(label="Flagged", required=False, choices=YES_NO_ANY)
    reviewed = forms.ChoiceField(label="Reviewed", required=False, choices=YES_NO_ANY)
    date_from = forms.DateField(
        label="Received from", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    date_to = forms.DateField(
        label="Received to", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._style_fields()

    def clean(self) -> dict:
        data = super().clean()
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            self.add_error("date_to", "The end date is before the start date.")
        return data

    def selector_filters(self) -> dict:
        """The valid filters as keyword arguments for `selectors_ui.worklist_page`."""
        data = self.cleaned_data if self.is_valid() else {}

        def yes_no(value: str | None) -> bool | None:
            return {"yes": True, "no": False}.get(value or "")

        return {
            "search": data.get("q") or None,
            "body_part": data.get("body_part") or None,
            "status": data.get("status") or None,
            "flagged": yes_no(data.get("flagged")),
            "reviewed": yes_no(data.get("reviewed")),
            "date_from": data.get("date_from"),
            "date_to": data.get("date_to"),
        }


class StudyNewForm(BootstrapMixin, forms.Form):
    """A study for an existing patient (`patient`) or for a new one (MRN, name, birth date, sex)."""

    patient = forms.IntegerField(required=False, widget=forms.HiddenInput)
    mrn = forms.CharField(label="MRN (patient ID)", required=False, max_length=64)
    name = forms.CharField(label="Patient name", required=False, max_length=200)
    birth_date = forms.DateField(
        label="Birth date", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    sex = forms.ChoiceField(label="Sex", required=False, choices=Sex.choices, initial=Sex.UNKNOWN)
    accession_number = forms.CharField(label="Accession number", max_length=64)
    body_part = forms.ChoiceField(label="Body part", choices=[("", "Choose…"), *BodyPart.choices])
    study_date = forms.DateField(
        label="Study date", required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    # Set by the page's script to the number of files chosen, so that a cut-off upload shows.
    expected_images = forms.IntegerField(
        required=False, min_value=1, max_value=10_000, widget=forms.HiddenInput
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._style_fields()

    def clean(self) -> dict:
        data = super().clean()
        if not data.get("patient"):
            if not (data.get("mrn") or "").strip():
                self.add_error("mrn", "Choose an existing patient above, or give the new patient's MRN.")
            if not (data.get("name") or "").strip():
                self.add_error("name", "Give the new patient's name.")
        return data


class ReviewForm(BootstrapMixin, forms.Form):
    decision = forms.ChoiceField(label="Decision", choices=ReviewDecision.choices, widget=forms.RadioSelect)
    final_label = forms.ChoiceField(
        label="Final label",
        required=False,
        choices=Label.choices,
        widget=forms.RadioSelect,
        help_text="Only for an override: the label you give the study.",
    )
    comment = forms.CharField(
        label="Reason",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Required when you override the model.",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._style_fields()

    def clean(self) -> dict:
        data = super().clean()
        if data.get("decision") == ReviewDecision.OVERRIDE:
            if not data.get("final_label"):
                self.add_error("final_label", "Choose the final label for the override.")
            if not (data.get("comment") or "").strip():
                self.add_error("comment", "An override needs a reason.")
        elif data.get("decision") == ReviewDecision.RULE and not data.get("final_label"):
            self.add_error("final_label", "Choose your reading: abnormal or normal.")
        return data


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Several files under one name (Django's documented pattern)."""

    def __init__(self, *args, **kwargs) -> None:
        # Empty files reach the upload service, which names the problem like any other bad file.
        kwargs.setdefault("allow_empty_file", True)
        # No `accept` filter: DICOM files often have no extension at all.
        kwargs.setdefault("widget", MultipleFileInput)
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        single = super().clean
        if isinstance(data, list | tuple):
            return [single(item, initial) for item in data]
        return [single(data, initial)] if data else []


class UploadForm(BootstrapMixin, forms.Form):
    file = MultipleFileField(label="Radiographs (PNG, JPEG or DICOM)")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._style_fields()


class MismatchConfirmForm(BootstrapMixin, forms.Form):
    """Beside an upload: confirm that files whose DICOM header disagrees with the study are right."""

    confirm_mismatch = forms.BooleanField(
        label="The header differs from the study, and these files are right: upload them anyway",
        required=False,
    )
    mismatch_reason = forms.CharField(
        label="Why the files are right despite the mismatch",
        required=False,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Required with the confirmation, e.g. the name was changed at registration.",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._style_fields()


class BodyPartForm(BootstrapMixin, forms.Form):
    """A received study whose DICOM header named no MURA body part: staff say which it is."""

    body_part = forms.ChoiceField(label="Body part", choices=[("", "Choose…"), *BodyPart.choices])

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._style_fields()
