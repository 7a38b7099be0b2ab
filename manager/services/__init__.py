"""The Manager's gRPC services: ManagerService (Daemons) and AdminService (fleetctl)."""

from .admin_service import AdminService
from .manager_service import ManagerService

__all__ = ["AdminService", "ManagerService"]
