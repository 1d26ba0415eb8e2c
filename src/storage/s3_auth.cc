#include "storage/s3_auth.h"

namespace tensorizer::s3 {

std::vector<std::string> AuthHeaders(const ResolvedConfig& config, const Location& location,
                                     const std::string& method, const QueryList& query,
                                     const std::string& payload_sha256, int64_t time_utc_seconds) {
  // The Host header is sent explicitly so that what the server sees is what
  // was signed, whatever libcurl would derive from the URL.
  std::string host = config.RequestHost(location);
  std::vector<std::string> lines = {"Host: " + host};
  if (!config.credentials) return lines;
  RequestToSign r;
  r.method = method;
  r.host = host;
  r.path = config.RequestPath(location);
  r.query = query;
  r.payload_sha256 = payload_sha256;
  r.region = config.region;
  r.time_utc_seconds = time_utc_seconds;
  SignedRequest signed_request = SignRequest(*config.credentials, r);
  lines.push_back("Authorization: " + signed_request.authorization);
  for (const auto& [name, value] : signed_request.headers_to_add)
    lines.push_back(name + ": " + value);
  return lines;
}

std::string XmlElement(const std::string& xml, const std::string& tag) {
  std::string open = "<" + tag + ">", close = "</" + tag + ">";
  size_t b = xml.find(open);
  if (b == std::string::npos) return "";
  b += open.size();
  size_t e = xml.find(close, b);
  if (e == std::string::npos) return "";
  return xml.substr(b, e - b);
}

std::string DescribeFailure(const ResolvedConfig& config, const Location& location,
                            const std::string& status_text, const std::string& body) {
  std::string code = XmlElement(body, "Code"), message = XmlElement(body, "Message");
  std::string out = status_text;
  if (!code.empty()) {
    out += ": " + code + (message.empty() ? "" : ": " + message);
  } else if (!body.empty() && body.find('<') == std::string::npos) {
    out += ": " + body;
  }
  out += " (endpoint " + config.scheme + "://" + config.host + ", bucket " + location.bucket;
  if (config.credentials) {
    out +=
        ", access key id " + config.credentials->access_key_id + " from " + config.credentials_from;
  } else {
    out += ", anonymous request: no credentials were found";
  }
  return out + ")";
}

}  // namespace tensorizer::s3
