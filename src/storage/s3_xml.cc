#include "storage/s3_xml.h"

#include <expat.h>

#include <algorithm>
#include <memory>

namespace tensorizer::s3 {
namespace {

// Expat joins a namespace URI and a local name with this byte, which no XML
// name can contain.
constexpr char kNamespaceSeparator = '\x01';

std::string LocalName(const XML_Char* name) {
  std::string_view n(name);
  size_t sep = n.rfind(kNamespaceSeparator);
  return std::string(sep == std::string_view::npos ? n : n.substr(sep + 1));
}

struct ParseState {
  XML_Parser parser = nullptr;
  XmlDocument* doc = nullptr;
  int depth = 0;
  std::string child;  // the child element being read (depth 2), or ""
  std::string text;
  bool doctype = false;
};

void XMLCALL OnStart(void* user, const XML_Char* name, const XML_Char** /*attributes*/) {
  auto* s = static_cast<ParseState*>(user);
  ++s->depth;
  if (s->depth == 1) {
    s->doc->root = LocalName(name);
  } else if (s->depth == 2) {
    s->child = LocalName(name);
    s->text.clear();
  }
}

void XMLCALL OnEnd(void* user, const XML_Char* /*name*/) {
  auto* s = static_cast<ParseState*>(user);
  if (s->depth == 2) {
    s->doc->children.emplace(s->child, s->text);
    s->child.clear();
    s->text.clear();
  }
  --s->depth;
}

void XMLCALL OnText(void* user, const XML_Char* data, int length) {
  auto* s = static_cast<ParseState*>(user);
  if (s->depth < 2 || length <= 0) return;
  size_t room = kMaxXmlFieldBytes - std::min(kMaxXmlFieldBytes, s->text.size());
  s->text.append(data, std::min(room, static_cast<size_t>(length)));
}

void XMLCALL OnDoctype(void* user, const XML_Char*, const XML_Char*, const XML_Char*, int) {
  auto* s = static_cast<ParseState*>(user);
  s->doctype = true;
  XML_StopParser(s->parser, XML_FALSE);
}

struct ParserDeleter {
  void operator()(XML_ParserStruct* p) const { XML_ParserFree(p); }
};

}  // namespace

std::string XmlDocument::Child(const std::string& name) const {
  auto it = children.find(name);
  return it == children.end() ? "" : it->second;
}

XmlDocument ParseXml(std::string_view body) {
  XmlDocument doc;
  size_t start = body.find_first_not_of(" \t\r\n");
  body.remove_prefix(start == std::string_view::npos ? body.size() : start);
  if (body.empty()) {
    doc.problem = "the body is empty";
    return doc;
  }
  std::unique_ptr<XML_ParserStruct, ParserDeleter> parser(
      XML_ParserCreateNS(nullptr, kNamespaceSeparator));
  if (!parser) {
    doc.problem = "out of memory for the XML parser";
    return doc;
  }
  ParseState state;
  state.parser = parser.get();
  state.doc = &doc;
  XML_SetUserData(parser.get(), &state);
  XML_SetElementHandler(parser.get(), OnStart, OnEnd);
  XML_SetCharacterDataHandler(parser.get(), OnText);
  XML_SetStartDoctypeDeclHandler(parser.get(), OnDoctype);
  // Expat takes an int length: feed the body in pieces.
  constexpr size_t kPiece = 1 << 20;
  XML_Status status = XML_STATUS_OK;
  do {
    const size_t n = std::min(kPiece, body.size());
    const bool last = n == body.size();
    status = XML_Parse(parser.get(), body.data(), static_cast<int>(n), last ? XML_TRUE : XML_FALSE);
    body.remove_prefix(n);
  } while (status == XML_STATUS_OK && !body.empty());
  if (status == XML_STATUS_OK) {
    doc.well_formed = true;
    return doc;
  }
  // Cut short: the child being read keeps the text read so far.
  if (state.depth >= 2) doc.children.emplace(state.child, state.text);
  if (state.doctype) {
    doc.problem = "the document has a DOCTYPE, which S3 never sends";
  } else {
    doc.problem = std::string("malformed XML: ") +
                  XML_ErrorString(XML_GetErrorCode(parser.get())) + " at line " +
                  std::to_string(XML_GetCurrentLineNumber(parser.get()));
  }
  return doc;
}

}  // namespace tensorizer::s3
