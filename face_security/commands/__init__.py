"""The face_security domain's commands (declared in ``face_security/domain.yaml``)."""
