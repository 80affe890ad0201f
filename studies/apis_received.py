"""REST API for studies received by DICOM: set the body part their header did not name."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from studies import selectors
from studies.apis import ApiView
from studies.audit import request_ip
from studies.models import BodyPart
from studies.serializers import StudyDetailOutputSerializer
from studies.services.dicom_ingest import study_body_part_set
from studies.services.studies import unknown_body_part_message


class BodyPartInputSerializer(serializers.Serializer):
    body_part = serializers.CharField(max_length=32, help_text=f"one of {', '.join(BodyPart.values)}")

    def validate_body_part(self, value: str) -> str:
        if value not in BodyPart.values:
            raise serializers.ValidationError(unknown_body_part_message(value))
        return value


class StudyBodyPartApi(ApiView):
    @extend_schema(request=BodyPartInputSerializer, responses={200: StudyDetailOutputSerializer})
    def post(self, request: Request, pk: int) -> Response:
        """Set the body part of a study received by DICOM whose header named none (status
        `needs_body_part`): its images are queued for analysis. 409 when the study has one already."""
        study = selectors.study_get(user=request.user, study_id=pk)
        serializer = BodyPartInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        study_body_part_set(
            study=study,
            body_part=serializer.validated_data["body_part"],
            actor=request.user,
            ip=request_ip(request),
        )
        study = selectors.study_detail(user=request.user, study_id=pk)
        return Response(StudyDetailOutputSerializer(study, context={"request": request}).data)
