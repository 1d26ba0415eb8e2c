// `tensorizer convert IN OUT`: safetensors <-> .tensors through the library's
// ConvertFile (convert.h), which streams and never leaves a partial OUT.
#include "tensorizer/convert.h"

#include <cstdint>
#include <cstdio>

#include "command.h"
#include "key_options.h"
#include "remote_options.h"
#include "tensor_display.h"

namespace tensorizer::cli {
namespace {

const std::string kHelp =
    std::string(
        "usage: tensorizer convert [--to tensors|safetensors] [--verify] [--batch-bytes N]\n"
        "                          [KEY OPTIONS] [REMOTE OPTIONS] IN OUT\n"
        "\n"
        "Converts a safetensors file into a .tensors file, or a .tensors file into a\n"
        "safetensors file, streaming: tensors are loaded and written in batches of\n"
        "bounded size. IN is a path or a URI (file://, http(s)://, s3://bucket/key,\n"
        "redis://host/prefix); OUT is a path or s3://bucket/key. A local OUT is\n"
        "written under a temporary name and renamed at the end, an s3:// OUT is a\n"
        "multipart upload completed at the end, so a failed conversion leaves no\n"
        "OUT behind. The output format is --to, else OUT's extension (.tensors,\n"
        ".safetensors), else the format IN is not.\n"
        "\n"
        "safetensors -> .tensors: every key becomes a state-dict tensor of that name;\n"
        "the file is byte-identical to tensorizer's write_state_dict of the same\n"
        "tensors. The __metadata__ of IN has no place in a .tensors file and is\n"
        "dropped (with a note on stderr).\n"
        ".tensors -> safetensors: path names such as [\"layers\",0,\"weight\"] become\n"
        "dotted keys (layers.0.weight); meta tensors are written as zeros, as they\n"
        "load; tensors are ordered as the safetensors package orders them. Dtypes\n"
        "safetensors cannot hold (complex32, complex128, float8 *fnuz) fail.\n"
        "\n"
        "options:\n"
        "  --to FORMAT      tensors or safetensors\n"
        "  --verify         check the hashes of IN (CRC32, or SHA-256 where no CRC32\n"
        "                   is stored) while loading; a mismatch fails the conversion\n"
        "  --batch-bytes N  load at most N bytes of tensor data per batch (default\n"
        "                   134217728); up to two batches are in memory at once\n"
        "  -h, --help       show this help\n"
        "\n"
        "key options (keys never go on the command line):\n"
        "  --key-file F                 decrypt IN with the 32-byte key in file F\n"
        "  --passphrase-env VAR         decrypt IN with the passphrase in $VAR\n"
        "  --encrypt-key-file F         encrypt OUT (.tensors) with the 32-byte key in F\n"
        "  --encrypt-passphrase-env VAR encrypt OUT with a key derived from $VAR\n"
        "                               (Argon2id, fresh random salt)\n"
        "  --ops N, --mem N             Argon2id limits for that key: min, interactive,\n"
        "                               moderate (default) or sensitive, or numbers\n"
        "                               (--mem in bytes)\n"
        "\n") +
    kRemoteOptionsHelp +
    "\n"
    "Prints one summary line. exit status: 0 converted, 1 IN cannot be read, is\n"
    "invalid, fails a check or cannot be held by the output format, or OUT cannot\n"
    "be written, 2 usage error\n";

const char* FormatName(FileFormat f) {
  return f == FileFormat::kSafetensors ? "safetensors" : ".tensors";
}

int RunConvert(const std::vector<std::string>& args) {
  const Command& self = kConvertCommand;
  OptionSpec spec{{"--verify"}, {"--to", "--batch-bytes"}};
  for (const char* o : kDecryptionOptions) spec.valued.push_back(o);
  for (const char* o : kEncryptionOptions) spec.valued.push_back(o);
  AddRemoteOptions(&spec);
  int exit_code = kExitOk;
  auto parsed = ParseCommand(self, args, spec, {"IN", "OUT"}, &exit_code);
  if (!parsed) return exit_code;
  std::string usage_error;
  auto remote = RemoteOptionsFromArgs(*parsed, &usage_error);
  if (!remote) return UsageError(self, usage_error);
  ConvertOptions options;
  options.source = remote->source;
  options.sink = remote->sink;
  if (auto to = parsed->value("--to")) {
    if (*to == "tensors") {
      options.to = ConvertTo::kTensors;
    } else if (*to == "safetensors") {
      options.to = ConvertTo::kSafetensors;
    } else {
      return UsageError(self, "--to must be tensors or safetensors, not '" + *to + "'");
    }
  }
  if (parsed->has("--verify")) options.verify = HashCheck::kFast;
  if (auto text = parsed->value("--batch-bytes")) {
    auto v = ParseCount(*text, 1, UINT64_MAX / 2);
    if (!v) return UsageError(self, "--batch-bytes must be a positive number of bytes");
    options.batch_bytes = *v;
  }
  std::optional<KeyOptionError> key_error;
  options.decryption = DecryptionFromArgs(*parsed, &key_error);
  if (key_error) return KeyOptionFailure(self, *key_error);
  // Usage errors first: no key is derived for a command that cannot run.
  const bool encrypting = parsed->value("--encrypt-key-file") ||
                          parsed->value("--encrypt-passphrase-env") || parsed->value("--ops") ||
                          parsed->value("--mem");
  if (encrypting && options.to == ConvertTo::kSafetensors) {
    return UsageError(self, "safetensors files cannot be encrypted");
  }
  options.encryption = EncryptionFromArgs(*parsed, &key_error);
  if (key_error) return KeyOptionFailure(self, *key_error);

  const std::string& in = parsed->positional[0];
  const std::string& out = parsed->positional[1];
  auto result = ConvertFile(in, out, options);
  if (!result.ok()) return Failure(self, result.status().message());
  if (result->dropped_metadata) {
    std::fprintf(stderr,
                 "tensorizer convert: note: the %s of %s (%s) has no place in a .tensors file "
                 "and was not carried over\n",
                 "__metadata__", DisplayUri(in).c_str(),
                 (std::to_string(result->dropped_metadata_entries) +
                  (result->dropped_metadata_entries == 1 ? " entry" : " entries"))
                     .c_str());
  }
  if (result->meta_tensors > 0 && result->output_format == FileFormat::kSafetensors) {
    std::fprintf(stderr,
                 "tensorizer convert: note: %s stored without data (meta) written as zeros\n",
                 Plural(result->meta_tensors, "tensor").c_str());
  }
  std::string to = FormatName(result->output_format);
  if (result->output_version > 0) {
    to += " data version " + std::to_string(result->output_version);
    if (options.encryption) to += ", encrypted";
  }
  Print(DisplayUri(in) + " -> " + DisplayUri(out) + ": " +
        Plural(result->tensor_count, "tensor") + ", " + std::to_string(result->data_bytes) +
        " data bytes, " + FormatName(result->input_format) + " to " + to + "\n");
  return kExitOk;
}

}  // namespace

const Command kConvertCommand = {"convert", "convert between safetensors and .tensors files",
                                 kHelp.c_str(), RunConvert};

}  // namespace tensorizer::cli
