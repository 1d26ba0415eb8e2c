// Response headers as a hostile server sends them (storage/http_protocol.h):
// what one request's headers may cost, over interim and redirected
// responses.
#include "storage/http_protocol.h"

#include <gtest/gtest.h>

#include <string>

namespace tensorizer::http {
namespace {

TEST(HttpResponse, InterimResponsesAreCountedAcrossStatusLines) {
  Response r;
  for (int i = 0; i < kMaxInterimResponses; ++i) {
    r.AddLine("HTTP/1.1 100 Continue\r\n");
    r.AddLine("\r\n");
  }
  EXPECT_TRUE(r.header_problem.empty()) << r.header_problem;
  r.AddLine("HTTP/1.1 100 Continue\r\n");
  EXPECT_EQ(r.interim_responses, kMaxInterimResponses + 1);
  EXPECT_NE(r.header_problem.find("interim (1xx) responses"), std::string::npos);
  // A final status line starts a new response, but not a new budget.
  r.AddLine("HTTP/1.1 206 Partial Content\r\n");
  EXPECT_EQ(r.status, 206);
  EXPECT_FALSE(r.header_problem.empty());
}

TEST(HttpResponse, RedirectsAreNotInterimResponses) {
  Response r;
  for (int i = 0; i < 3 * kMaxInterimResponses; ++i) r.AddLine("HTTP/1.1 302 Found\r\n");
  EXPECT_EQ(r.interim_responses, 0);
  EXPECT_TRUE(r.header_problem.empty());
}

TEST(HttpResponse, HeaderBytesAreBoundedOverTheWholeRequest) {
  Response r;
  const std::string line = "X-Pad: " + std::string(1000, 'p') + "\r\n";
  r.AddLine("HTTP/1.1 302 Found\r\n");
  while (r.header_bytes < kMaxHeaderBytes / 2) r.AddLine(line);
  // The redirect's target answers: its headers add to the same budget.
  r.AddLine("HTTP/1.1 206 Partial Content\r\n");
  while (r.header_bytes + line.size() <= kMaxHeaderBytes) r.AddLine(line);
  EXPECT_TRUE(r.header_problem.empty()) << r.header_problem;
  r.AddLine(line);
  EXPECT_NE(r.header_problem.find("exceed 256 KiB"), std::string::npos) << r.header_problem;
}

}  // namespace
}  // namespace tensorizer::http
