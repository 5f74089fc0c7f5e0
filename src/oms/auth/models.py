from __future__ import annotations

from datetime import datetime

from sqlalchemy import Identity, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from oms.db import Base, UTCDateTime, utcnow

# users.id is a PostgreSQL `integer` (int4): no id outside 1..MAX_USER_ID can exist.
MAX_USER_ID = 2**31 - 1


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, Identity(), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    hashed_password: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
