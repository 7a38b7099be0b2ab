"""Where the Manager is, for the Daemon: the addresses of ``manager.address``, taken in turn.

``manager.address`` holds one or more ``HOST:PORT`` entries (checked by
:func:`daemon.config.manager_addresses`). Names are resolved on the event loop, each of
their A/AAAA records an :class:`Endpoint` of its own (:mod:`common.addresses`, shared with
fleetctl).

The Daemon talks to one endpoint at a time and moves to the next one only when that one
fails (:meth:`ManagerAddresses.advance`); it never moves back by itself while an endpoint
answers. Where it *starts* is fixed per node (``start_key``, the node id), so a fleet given
the same list spreads over the Managers instead of all piling onto the first one. Names
are resolved again once every endpoint failed in a row (and whenever no endpoint is
known), so a Manager that moved to a new address is found without a Daemon restart; a
name that stops resolving keeps its last known addresses.
"""

from common.addresses import Endpoint, ManagerAddresses, Resolver, is_ip, start_index

__all__ = ["Endpoint", "ManagerAddresses", "Resolver", "is_ip", "start_index"]
