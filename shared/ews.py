"""EWS wire names both halves (and the simulator, and the tests) must spell alike."""

from __future__ import annotations

SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
MESSAGES_NS = "http://schemas.microsoft.com/exchange/services/2006/messages"
TYPES_NS = "http://schemas.microsoft.com/exchange/services/2006/types"

#: The SOAPAction of a push notification (SOAP 1.1 header; in SOAP 1.2 the ``action`` content-type parameter).
SOAP_ACTION = MESSAGES_NS + "/SendNotification"
