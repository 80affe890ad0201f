"""Audit events as sentences a person reads: who did what to which image or study.

"Ada Lovelace confirmed the model's result Abnormal", "Sam Staff uploaded image 2 (wrist.dcm): DICOM,
2048 by 2500 px, 5.1 MB", "The worker predicted image 1: Abnormal, P 0.87". One builder per action
recorded by studies/services; an action without one (added later, or by a newer version) still
reads as a sentence, from its name and its details. The stored event is not changed: the sentence
is built when it is shown (the study page's trail, the admin's audit log).

Images are named as the study page numbers them ("image 2", in upload order) and link to their
viewer on the study page; studies are named by accession number and link to their page. On the
study page itself the study is not named again.
"""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils.html import conditional_escape, format_html
from django.utils.safestring import SafeString, mark_safe

from studies.models import AuditEvent, BodyPart, Radiograph, ResultLabel, Study

MAX_TEXT = 160  # longer free text (errors, reasons) is cut, the full value stays in the event
MAX_LISTED = 6  # images named one by one; beyond, "and 3 more"
VIEW_PARTS = {"preview": "preview", "file": "original file", "heatmap": "heat map", "pixels": "pixel data"}
FORMATS = {"dcm": "DICOM", "png": "PNG", "jpeg": "JPEG"}


@dataclass(frozen=True)
class Link:
    text: str
    url: str


Piece = str | Link


@dataclass(frozen=True)
class Sentence:
    """Text with links: str() is the plain text, the HTML (autoescaped templates, format_html)
    has each link as an anchor."""

    pieces: tuple[Piece, ...]

    def __str__(self) -> str:
        return "".join(piece.text if isinstance(piece, Link) else piece for piece in self.pieces)

    @property
    def html(self) -> SafeString:
        """For templates, which render other objects through str() (the links would be lost)."""
        return self.__html__()

    def __html__(self) -> SafeString:
        html = "".join(
            format_html('<a href="{}">{}</a>', piece.url, piece.text)
            if isinstance(piece, Link)
            else str(conditional_escape(piece))
            for piece in self.pieces
        )
        return mark_safe(html)  # every piece is escaped above


@dataclass(frozen=True)
class ImageRef:
    number: int  # the study page's "Image 2"
    name: str
    study_id: int


@dataclass
class _Context:
    """What the sentences of a batch of events refer to, fetched once for the whole batch."""

    on_study_page: bool
    actors: dict[int, str] = field(default_factory=dict)
    studies: dict[int, str] = field(default_factory=dict)  # id -> accession number
    images: dict[int, ImageRef] = field(default_factory=dict)

    def actor(self, event: AuditEvent, *, fallback: str = "The system") -> str:
        if event.actor_id is None:
            return event.actor_username or fallback
        return self.actors.get(event.actor_id) or event.actor_username or fallback

    def study_url(self, study_id: int) -> str:
        return reverse("study_detail", args=[study_id])

    def study(self, event: AuditEvent) -> list[Piece]:
        """The study named: a link off the study page, plain text on it."""
        if event.study_id is None:
            return ["a study"]
        accession = self.studies.get(event.study_id, f"#{event.study_id}")
        if self.on_study_page:
            return [f"study {accession}"]
        return ["study ", Link(accession, self.study_url(event.study_id))]

    def on_study(self, event: AuditEvent, preposition: str = "on") -> list[Piece]:
        """ " on study ACC-1" off the study page (where the sentence would not say which), else nothing."""
        if self.on_study_page or event.study_id is None:
            return []
        return [f" {preposition} ", *self.study(event)]

    def image(self, image_id: Any) -> list[Piece]:
        ref = self.images.get(_int(image_id))
        if ref is None:
            return [f"image #{image_id}"]
        text = f"image {ref.number}" + (f" ({ref.name})" if ref.name else "")
        return [Link(text, f"{self.study_url(ref.study_id)}#viewer-{_int(image_id)}")]

    def images_list(self, image_ids: Sequence[Any]) -> list[Piece]:
        """ "image 1", "image 1 and image 2", "image 1, image 2 and image 3" (links); past six images,
        "and 3 more"."""
        ids = list(image_ids)
        if not ids:
            return ["no image"]
        shown = ids[:MAX_LISTED]
        pieces: list[Piece] = []
        for index, image_id in enumerate(shown):
            if index:
                last = index == len(shown) - 1 and len(ids) == len(shown)
                pieces.append(" and " if last else ", ")
            pieces.extend(self.image(image_id))
        if len(ids) > len(shown):
            pieces.append(f" and {len(ids) - len(shown)} more")
        return pieces


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _cut(text: Any, limit: int = MAX_TEXT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def label(value: Any) -> str:
    """A result or review label as every page shows it: "Abnormal", "Normal", "Indeterminate"."""
    try:
        return ResultLabel(value).label
    except ValueError:
        return str(value or "no label")


def _probability(value: Any) -> str:
    return f"P {value:.2f}" if isinstance(value, int | float) else "P unknown"


def _body_part(value: Any) -> str:
    try:
        return BodyPart(value).label
    except ValueError:
        return str(value) if value else "no body part"


def _size(num_bytes: Any) -> str:
    if not isinstance(num_bytes, int):
        return ""
    if num_bytes >= 1024 * 1024:
        return f"{num_bytes / (1024 * 1024):.1f} MB"
    return f"{max(num_bytes // 1024, 1)} kB"


def _sender(source: Any) -> str:
    """Who sent DICOM files, from `DicomSource.details()`: "SCANNER1 (10.0.0.5) by C-STORE"."""
    if not isinstance(source, dict):
        return ""
    who = source.get("calling_ae") or source.get("peer") or ""
    if source.get("calling_ae") and source.get("peer"):
        who = f"{who} ({source['peer']})"
    kinds = {"c-store": "C-STORE", "cstore": "C-STORE", "stow-rs": "STOW-RS", "stowrs": "STOW-RS"}
    kind = kinds.get(source.get("kind", ""), source.get("kind", ""))
    return " ".join(part for part in (who, f"by {kind}" if kind else "") if part)


def _short_version(version: Any) -> str:
    return str(version or "")[:8] or "unknown"


def _model(details: dict) -> str:
    """ "wrist-irv2, version 1a2b3c4d", and what every demo result must say."""
    name = details.get("model_name") or "the model"
    text = f"{name}, version {_short_version(details.get('model_version') or details.get('version'))}"
    return text + ("; demo model — not for clinical use" if details.get("demo") else "")


# --- one builder per action --------------------------------------------------------------------
Builder = Callable[[AuditEvent, dict, _Context], list[Piece]]


def _study_created(event, d, ctx):
    pieces: list[Piece] = [
        ctx.actor(event),
        " registered ",
        *ctx.study(event),
        f" ({_body_part(d.get('body_part'))}",
    ]
    expected = d.get("expected_images")
    if expected:
        pieces.append(f", {expected} image{'s' if expected != 1 else ''} expected")
    pieces.append(")")
    if sender := _sender(d.get("source")):
        pieces.append(f", received by DICOM from {sender}")
    return pieces


def _study_viewed(event, d, ctx):
    return [ctx.actor(event), " opened the study page", *ctx.on_study(event, "of")]


def _study_marked_complete(event, d, ctx):
    received, expected = d.get("images_received"), d.get("expected_images")
    return [
        ctx.actor(event),
        " marked ",
        *ctx.study(event),
        f" complete with {received} of {expected} expected images",
    ]


def _study_requeued(event, d, ctx):
    pieces: list[Piece] = [
        ctx.actor(event),
        " sent ",
        *ctx.images_list(d.get("images", [])),
        " for analysis again",
    ]
    if d.get("stalled"):
        pieces.append(" (the job had stalled)")
    return [*pieces, *ctx.on_study(event, "of")]


def _study_reviewed(event, d, ctx):
    who = ctx.actor(event)
    decision, model_label, final = d.get("decision"), label(d.get("model_label")), label(d.get("final_label"))
    if decision == "confirm":
        pieces: list[Piece] = [who, f" confirmed the model's result {model_label}"]
    elif decision == "override":
        pieces = [who, f" overrode the model's result {model_label}: final label {final}"]
    elif decision == "rule":
        pieces = [who, f" ruled on the indeterminate result: final label {final}"]
    else:
        pieces = [who, f" reviewed the result: final label {final}"]
    return [*pieces, *ctx.on_study(event)]


def _study_dicom_linked(event, d, ctx):
    return [
        ctx.actor(event, fallback="The DICOM receiver"),
        " linked ",
        *ctx.study(event),
        f" to its DICOM study (StudyInstanceUID {d.get('study_instance_uid', 'unknown')})",
    ]


def _study_body_part_set(event, d, ctx):
    pieces: list[Piece] = [
        ctx.actor(event),
        " set the body part of ",
        *ctx.study(event),
        f" to {_body_part(d.get('body_part'))}",
    ]
    if images := d.get("images"):
        pieces += ["; ", *ctx.images_list(images), " queued for analysis"]
    header = d.get("header")
    if isinstance(header, dict) and header:
        pieces.append(" (the DICOM header said: " + "; ".join(f"{v}" for v in header.values()) + ")")
    return pieces


def _image_stored(event, d, ctx, *, verb: str):
    facts = [FORMATS.get(d.get("format", ""), str(d.get("format", "")).upper())]
    if d.get("width") and d.get("height"):
        facts.append(f"{d['width']} \N{MULTIPLICATION SIGN} {d['height']} px")
    facts.append(_size(d.get("bytes")))
    pieces: list[Piece] = [
        ctx.actor(event, fallback="The DICOM receiver"),
        f" {verb} ",
        *ctx.image(event.object_id),
        ": " + ", ".join(fact for fact in facts if fact),
    ]
    if sender := _sender(d.get("source")):
        pieces.append(f", by DICOM from {sender}")
    pieces += ctx.on_study(event, "to")
    if d.get("waiting_for_body_part"):
        pieces.append("; it waits for someone to set the body part")
    return pieces


def _image_uploaded(event, d, ctx):
    return _image_stored(event, d, ctx, verb="uploaded")


def _image_received(event, d, ctx):
    return _image_stored(event, d, ctx, verb="received")


def _image_duplicate_received(event, d, ctx):
    count = d.get("instances", 0)
    pieces: list[Piece] = [
        ctx.actor(event, fallback="The DICOM receiver"),
        f" received {count} instance{'s' if count != 1 else ''} already stored",
        *ctx.on_study(event, "in"),
    ]
    if sender := _sender(d.get("source")):
        pieces.append(f" again from {sender}")
    return [*pieces, ": nothing changed"]


def _image_mismatch_confirmed(event, d, ctx):
    mismatches = d.get("mismatches") or []
    described = "; ".join(
        _cut(
            m.get("message") or f"{m.get('label')} {m.get('file_value')} (study: {m.get('study_value')})", 120
        )
        for m in mismatches
        if isinstance(m, dict)
    )
    pieces: list[Piece] = [ctx.actor(event), " confirmed a header mismatch on ", *ctx.image(event.object_id)]
    if described:
        pieces.append(f": {described}")
    if d.get("reason"):
        pieces.append(f" — reason: “{_cut(d['reason'])}”")
    return pieces


def _image_viewed(event, d, ctx):
    part = VIEW_PARTS.get(d.get("part", ""), d.get("part") or "pixels")
    return [
        ctx.actor(event),
        " viewed ",
        *ctx.image(event.object_id),
        f" ({part})",
        *ctx.on_study(event, "of"),
    ]


def _inference_started(event, d, ctx):
    return [
        "The worker started analysing ",
        *ctx.images_list(d.get("images", [])),
        *ctx.on_study(event, "of"),
    ]


def _inference_completed(event, d, ctx):
    predictions = [p for p in d.get("predictions") or [] if isinstance(p, dict)]
    pieces: list[Piece] = ["The worker predicted "]
    if not ctx.on_study_page and event.study_id is not None:
        pieces += [*ctx.study(event), ": "]
    if predictions:
        for index, prediction in enumerate(predictions[:MAX_LISTED]):
            if index:
                pieces.append("; ")
            pieces += [
                *ctx.image(prediction.get("image")),
                f": {label(prediction.get('label'))}, {_probability(prediction.get('abnormal_probability'))}",
            ]
        if len(predictions) > MAX_LISTED:
            pieces.append(f"; and {len(predictions) - MAX_LISTED} more images")
    else:
        pieces.append("no new image")
    if d.get("study_label"):
        pieces.append(
            f"; study result {label(d['study_label'])}, {_probability(d.get('study_abnormal_probability'))}"
        )
    pieces.append(f" (model {_model(d)})")
    for unsure in d.get("needs_human_read") or []:
        if isinstance(unsure, dict):
            pieces += [
                "; ",
                *ctx.image(unsure.get("image")),
                f" needs a human read: {_cut(unsure.get('reason', ''))}",
            ]
    return pieces


def _inference_failed(event, d, ctx):
    return [
        "The worker could not analyse ",
        *ctx.images_list(d.get("images", [])),
        *ctx.on_study(event, "of"),
        f": {_cut(d.get('error', 'no reason recorded'))}",
    ]


def _inference_unsupported(event, d, ctx):
    return [
        "The worker left ",
        *ctx.images_list(d.get("images", [])),
        *ctx.on_study(event, "of"),
        f" for a radiologist's read: {_cut(d.get('reason', 'no model for this body part'))}",
    ]


def _inference_handed_back(event, d, ctx):
    return [
        "The worker handed ",
        *ctx.images_list(d.get("images", [])),
        *ctx.on_study(event, "of"),
        " back to the queue as it stopped; they are sent again",
    ]


def _destination(d: dict) -> str:
    return str(d.get("destination") or "the PACS")


def _result_sent(event, d, ctx):
    return [
        "The worker sent the result",
        *ctx.on_study(event, "of"),
        f" to {_destination(d)} (attempt {d.get('attempt', 1)})",
    ]


def _result_send_failed(event, d, ctx):
    error = _cut(d.get("error", "no reason recorded"))
    pieces: list[Piece] = [
        "Sending the result",
        *ctx.on_study(event, "of"),
        f" to {_destination(d)} failed (attempt {d.get('attempt', '?')}): {error}",
    ]
    if d.get("will_retry"):
        pieces.append("; it will be tried again")
    elif d.get("gave_up"):
        pieces.append(f"; given up: {d['gave_up']}")
    return pieces


def _result_send_requeued(event, d, ctx):
    pieces: list[Piece] = [
        ctx.actor(event),
        " sent the result",
        *ctx.on_study(event, "of"),
        f" to {_destination(d)} again",
    ]
    if d.get("previous_error"):
        pieces.append(f" (it had failed: {_cut(d['previous_error'], 100)})")
    return pieces


def _result_not_sent(event, d, ctx):
    destinations = ", ".join(str(x) for x in d.get("destinations") or []) or "the PACS"
    return [
        "The result",
        *ctx.on_study(event, "of"),
        f" was not sent to {destinations}: {_cut(d.get('reason', ''))}",
    ]


def _patient_created(event, d, ctx):
    pieces: list[Piece] = [
        ctx.actor(event, fallback="The DICOM receiver"),
        f" registered patient MRN {d.get('mrn', '?')}",
    ]
    if d.get("mrn_issuer"):
        pieces.append(f" (issuer {d['mrn_issuer']})")
    if sender := _sender(d.get("source")):
        pieces.append(f", received by DICOM from {sender}")
    return pieces


def _auth_token_issued(event, d, ctx):
    return [
        ctx.actor(event),
        " was given a new API token" if d.get("created") else " fetched their API token",
    ]


def _model_version_recorded(event, d, ctx):
    pieces: list[Piece] = [
        ctx.actor(event, fallback="The worker"),
        f" recorded the {_body_part(d.get('body_part'))} model {_model(d)}",
    ]
    if isinstance(d.get("threshold"), int | float):
        pieces.append(f", threshold {d['threshold']:.2f}")
    pieces.append(", validated here" if d.get("validated") else ", not validated here")
    return pieces


def _model_version_updated(event, d, ctx):
    fields = ", ".join(str(f) for f in d.get("fields") or []) or "nothing"
    return [ctx.actor(event, fallback="The worker"), f" updated model {_model(d)}: changed {fields}"]


def _model_installed(event, d, ctx):
    return [
        ctx.actor(event, fallback="An administrator"),
        f" installed the {_body_part(d.get('body_part'))} model {_model(d)}",
    ]


def _dicom_instance_refused(event, d, ctx):
    sender = _sender(d.get("source"))
    return [
        "The DICOM receiver refused an instance",
        f" (SOPInstanceUID {event.object_id})" if event.object_id else "",
        f" from {sender}" if sender else "",
        f": {_cut(d.get('reason', 'no reason recorded'))}",
        f" (status {d['status']})" if d.get("status") else "",
    ]


BUILDERS: dict[str, Builder] = {
    "study.created": _study_created,
    "study.viewed": _study_viewed,
    "study.marked_complete": _study_marked_complete,
    "study.requeued": _study_requeued,
    "study.reviewed": _study_reviewed,
    "study.dicom_linked": _study_dicom_linked,
    "study.body_part_set": _study_body_part_set,
    "image.uploaded": _image_uploaded,
    "image.received": _image_received,
    "image.duplicate_received": _image_duplicate_received,
    "image.mismatch_confirmed": _image_mismatch_confirmed,
    "image.viewed": _image_viewed,
    "inference.started": _inference_started,
    "inference.completed": _inference_completed,
    "inference.failed": _inference_failed,
    "inference.unsupported": _inference_unsupported,
    "inference.handed_back": _inference_handed_back,
    "result.sent": _result_sent,
    "result.send_failed": _result_send_failed,
    "result.send_requeued": _result_send_requeued,
    "result.not_sent": _result_not_sent,
    "patient.created": _patient_created,
    "auth.token_issued": _auth_token_issued,
    "model_version.recorded": _model_version_recorded,
    "model_version.updated": _model_version_updated,
    "model.installed": _model_installed,
    "dicom.instance_refused": _dicom_instance_refused,
}


def _generic(event, d, ctx):
    """An action without a builder: its name as words, then its details ("key: value")."""
    words = event.action.replace(".", " ").replace("_", " ").strip() or "an event"
    pieces: list[Piece] = [ctx.actor(event), f": {words}"]
    if event.object_type == "studies.radiograph":
        pieces += [" (", *ctx.image(event.object_id), ")"]
    pieces += ctx.on_study(event)
    # Sorted: PostgreSQL's jsonb does not keep the order the details were written in.
    facts = [
        f"{key.replace('_', ' ')} {_cut(value, 60)}"
        for key, value in sorted(d.items())
        if value not in (None, "", [], {})
    ]
    if facts:
        pieces.append(" — " + "; ".join(facts))
    return pieces


# --- building ----------------------------------------------------------------------------------
def _image_ids(event: AuditEvent) -> set[int]:
    ids: set[int] = set()
    if event.object_type == "studies.radiograph" and (image_id := _int(event.object_id)) is not None:
        ids.add(image_id)
    d = event.details if isinstance(event.details, dict) else {}
    for value in d.get("images") or []:
        if (image_id := _int(value)) is not None:
            ids.add(image_id)
    for key in ("predictions", "needs_human_read"):
        for item in d.get(key) or []:
            if isinstance(item, dict) and (image_id := _int(item.get("image"))) is not None:
                ids.add(image_id)
    return ids


def _context(events: Sequence[AuditEvent], *, on_study_page: bool) -> _Context:
    """Names of the actors, accession numbers and image numbers: four queries for any number of events."""
    ctx = _Context(on_study_page=on_study_page)
    actor_ids = {event.actor_id for event in events if event.actor_id is not None}
    for user in get_user_model().objects.filter(pk__in=actor_ids):
        ctx.actors[user.pk] = user.get_full_name() or user.get_username()
    image_ids = set().union(*(_image_ids(event) for event in events)) if events else set()
    study_ids = {event.study_id for event in events if event.study_id is not None}
    study_ids |= set(Radiograph.objects.filter(pk__in=image_ids).values_list("study_id", flat=True))
    ctx.studies = dict(Study.objects.filter(pk__in=study_ids).values_list("pk", "accession_number"))
    numbers: dict[int, int] = {}
    # Numbered as the study page numbers them: every image of the study, in upload (id) order.
    for image_id, study_id, name in (
        Radiograph.objects.filter(study_id__in=study_ids)
        .order_by("study_id", "id")
        .values_list("id", "study_id", "original_name")
    ):
        numbers[study_id] = numbers.get(study_id, 0) + 1
        if image_id in image_ids:
            ctx.images[image_id] = ImageRef(number=numbers[study_id], name=name, study_id=study_id)
    return ctx


def sentence_for(event: AuditEvent, ctx: _Context) -> Sentence:
    builder = BUILDERS.get(event.action, _generic)
    details = event.details if isinstance(event.details, dict) else {"details": event.details}
    try:
        pieces = builder(event, details, ctx)
    except (AttributeError, KeyError, TypeError, ValueError):
        # Details written by an older or newer version in another shape: still one readable line.
        pieces = _generic(event, details, ctx)
    return Sentence(tuple(piece for piece in pieces if piece))


def describe(events: Iterable[AuditEvent], *, on_study_page: bool = False) -> list[AuditEvent]:
    """The events, each with `.sentence` (a Sentence) set; at most four queries whatever their number.

    `on_study_page`: the events are shown on their study's page, which need not name the study.
    """
    events = list(events)
    ctx = _context(events, on_study_page=on_study_page)
    for event in events:
        event.sentence = sentence_for(event, ctx)
    return events
