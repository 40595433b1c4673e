"""The teacher: prompt and feedback format (``prompt``), and backends that produce feedback (``model``)."""

from thinktuning.teacher.base import Teacher, TeacherCase, TeacherResult
from thinktuning.teacher.model import ModelTeacher
from thinktuning.teacher.prompt import Feedback, build_messages, feedback_text, parse_feedback, render_feedback

__all__ = [
    "Feedback",
    "ModelTeacher",
    "Teacher",
    "TeacherCase",
    "TeacherResult",
    "build_messages",
    "feedback_text",
    "parse_feedback",
    "render_feedback",
]
