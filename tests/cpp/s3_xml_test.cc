// What an S3 endpoint answers, read as hostile input: the XML reader
// (storage/s3_xml.h) and the server text that reaches messages
// (storage/s3_auth.h ServerText, DescribeFailure).
#include "storage/s3_xml.h"

#include <gtest/gtest.h>

#include <string>

#include "storage/s3_auth.h"

namespace tensorizer::s3 {
namespace {

TEST(S3Xml, NamespacedErrorIsAnError) {
  XmlDocument doc = ParseXml(
      "<?xml version=\"1.0\"?><Error xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
      "<Code>InternalError</Code><Message>try again</Message></Error>");
  EXPECT_TRUE(doc.well_formed) << doc.problem;
  EXPECT_EQ(doc.root, "Error");
  EXPECT_EQ(doc.Child("Code"), "InternalError");
  EXPECT_EQ(doc.Child("Message"), "try again");
}

TEST(S3Xml, PrefixedNamespaceIsTheLocalName) {
  XmlDocument doc = ParseXml(
      "<s3:CompleteMultipartUploadResult xmlns:s3=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
      "<s3:ETag>\"e-2\"</s3:ETag></s3:CompleteMultipartUploadResult>");
  EXPECT_TRUE(doc.well_formed) << doc.problem;
  EXPECT_EQ(doc.root, "CompleteMultipartUploadResult");
  EXPECT_EQ(doc.Child("ETag"), "\"e-2\"");
}

TEST(S3Xml, ErrorAfterLongKeepAliveWhitespaceIsSeen) {
  // AWS sends spaces while a completion runs, then the document.
  XmlDocument doc =
      ParseXml(std::string(200 << 10, ' ') + "\n<Error><Code>SlowDown</Code></Error>");
  EXPECT_TRUE(doc.well_formed) << doc.problem;
  EXPECT_EQ(doc.root, "Error");
  EXPECT_EQ(doc.Child("Code"), "SlowDown");
}

TEST(S3Xml, EmptyOrNonXmlBodyIsNotWellFormed) {
  for (const char* body : {"", "   \r\n", "plain text", "<a><b></a>"}) {
    XmlDocument doc = ParseXml(body);
    EXPECT_FALSE(doc.well_formed) << body;
    EXPECT_FALSE(doc.problem.empty()) << body;
  }
}

TEST(S3Xml, DoctypeIsRefusedBeforeAnyEntityIsExpanded) {
  std::string bomb = "<?xml version=\"1.0\"?><!DOCTYPE Error [<!ENTITY a \"aaaaaaaaaa\">";
  for (int i = 1; i < 10; ++i) {
    std::string prev = "&" + std::string(1, static_cast<char>('a' + i - 1)) + ";";
    std::string tenfold;
    for (int k = 0; k < 10; ++k) tenfold += prev;
    bomb += "<!ENTITY " + std::string(1, static_cast<char>('a' + i)) + " \"" + tenfold + "\">";
  }
  bomb += "]><Error><Code>&j;</Code></Error>";
  XmlDocument doc = ParseXml(bomb);
  EXPECT_FALSE(doc.well_formed);
  EXPECT_NE(doc.problem.find("DOCTYPE"), std::string::npos) << doc.problem;
  EXPECT_TRUE(doc.Child("Code").empty());
}

TEST(S3Xml, DocumentCutShortKeepsWhatWasRead) {
  XmlDocument doc = ParseXml("<Error><Code>AccessDenied</Code><Message>denied because");
  EXPECT_FALSE(doc.well_formed);
  EXPECT_EQ(doc.root, "Error");
  EXPECT_EQ(doc.Child("Code"), "AccessDenied");
  EXPECT_EQ(doc.Child("Message"), "denied because");
}

TEST(S3Xml, ChildTextIsBoundedAndTheFirstOfANameWins) {
  XmlDocument doc = ParseXml("<R><UploadId>first</UploadId><UploadId>second</UploadId><Big>" +
                             std::string(100 << 10, 'x') + "</Big></R>");
  EXPECT_TRUE(doc.well_formed) << doc.problem;
  EXPECT_EQ(doc.Child("UploadId"), "first");
  EXPECT_EQ(doc.Child("Big").size(), kMaxXmlFieldBytes);
}

ResolvedConfig ConfigWithToken() {
  ResolvedConfig c;
  c.scheme = "http";
  c.host = "127.0.0.1:9000";
  c.region = "us-east-1";
  c.credentials = Credentials{"AKIDEXAMPLE", "SECRET/VALUE+1", "TOKEN/VALUE=="};
  c.credentials_from = "environment";
  return c;
}

TEST(S3ServerText, SecretsAndSignaturesBecomeStars) {
  const ResolvedConfig c = ConfigWithToken();
  const std::string text = ServerText(
      "secret SECRET/VALUE+1 encoded SECRET%2FVALUE%2B1 token TOKEN/VALUE== "
      "x-amz-security-token: TOKENISH Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/x, "
      "Signature=0123abcd url ?X-Amz-Signature=beef&X-Amz-Security-Token=T0K&X-Amz-Credential=C",
      c);
  for (const char* leaked : {"SECRET", "TOKEN/", "TOKENISH", "0123abcd", "beef", "T0K", "=C"}) {
    EXPECT_EQ(text.find(leaked), std::string::npos) << leaked << " in " << text;
  }
  EXPECT_NE(text.find("Signature=***"), std::string::npos) << text;
  EXPECT_NE(text.find("x-amz-security-token: ***"), std::string::npos) << text;
  EXPECT_NE(text.find("AKIDEXAMPLE"), std::string::npos) << "the key id is no secret";
}

TEST(S3ServerText, ControlCharactersAreEscapedAndLengthIsCapped) {
  const ResolvedConfig c = ConfigWithToken();
  EXPECT_EQ(ServerText("a\r\nForged: 1\x1b[0m\x7f", c), "a\\x0d\\x0aForged: 1\\x1b[0m\\x7f");
  const std::string long_text = ServerText(std::string(5000, 'z'), c);
  EXPECT_LT(long_text.size(), 320u);
  EXPECT_NE(long_text.find("(cut)"), std::string::npos);
}

TEST(S3ServerText, RedactionNeverLoops) {
  // A secret made of what replaces it must not be found again in "***".
  ResolvedConfig c = ConfigWithToken();
  c.credentials->secret_access_key = "**";
  EXPECT_EQ(ServerText("a****b", c), "a******b");
}

TEST(S3DescribeFailure, ServerMessagePassesThroughServerText) {
  const ResolvedConfig c = ConfigWithToken();
  const std::string m =
      DescribeFailure(c, Location{"models", "m.tensors"}, "HTTP 403 Forbidden",
                      "<Error xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Code>AccessDenied"
                      "</Code><Message>echo TOKEN/VALUE== &#13;&#10;</Message></Error>");
  EXPECT_EQ(m.rfind("HTTP 403 Forbidden: AccessDenied: echo *** \\x0d\\x0a (endpoint", 0), 0u)
      << m;
  EXPECT_EQ(m.find("TOKEN"), std::string::npos) << m;
}

}  // namespace
}  // namespace tensorizer::s3
