// What may be printed of a URI.
//
// URIs carry secrets: a password in the userinfo (http://user:pw@host/,
// redis://:pw@host/), and the signature and session token of a presigned
// URL (?X-Amz-Signature=..., ?X-Amz-Security-Token=...). Every message, log
// line, repr and CLI output shows a URI only through RedactUri.
#pragma once

#include <string>

namespace tensorizer {

// `uri` with the password of its userinfo and the values of secret-bearing
// query parameters replaced by "***". The user name, host, path and other
// parameters stay, so the message still says which object was meant. Works
// on any scheme and on text that is not a URI at all (returned as is, with
// control characters escaped as \xNN so a hostile name cannot forge lines).
std::string RedactUri(const std::string& uri);

// `s` with control characters (C0 and DEL) as \xNN, so that a name from a
// URI, a setting or a server cannot forge lines in a message.
std::string EscapeControls(const std::string& s);

// Whether a query parameter of this name (case-insensitive) holds a secret:
// X-Amz-Signature, X-Amz-Security-Token, X-Goog-Signature, Signature, sig,
// token, access_token, password, secret...
bool IsSecretQueryParameter(const std::string& name);

}  // namespace tensorizer
