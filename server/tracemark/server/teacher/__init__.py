"""Teacher backends behind one interface (:class:`TeacherBackend`) and the batching queue in front."""

from tracemark.server.teacher.base import (
    Generation,
    GenerationParams,
    TeacherBackend,
    TeacherError,
    TeacherInfo,
)

__all__ = ["Generation", "GenerationParams", "TeacherBackend", "TeacherError", "TeacherInfo"]
