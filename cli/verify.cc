// `tensorizer verify FILE [--all]`: load every tensor with hash checks.
//
// One load of the whole file through the pipeline decides pass or fail.
// The pipeline stops at the first error, so when it fails the tensors are
// checked again one by one (tensor_check.h) to name every one that fails,
// not just the first.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <utility>

#include "command.h"
#include "key_options.h"
#include "remote_options.h"
#include "tensor_check.h"
#include "tensor_display.h"
#include "tensorizer/load.h"

namespace tensorizer::cli {
namespace {

const std::string kHelp =
    std::string(
        "usage: tensorizer verify [--all] [--key-file F | --passphrase-env VAR]\n"
        "                         [REMOTE OPTIONS] FILE\n"
        "\n"
        "Loads every tensor of a .tensors file and checks its stored hashes. By\n"
        "default each tensor is checked with its CRC32 (SHA-256 where no CRC32 is\n"
        "stored), which catches the accidental corruption either hash can catch;\n"
        "--all checks every stored hash. Prints one line per tensor that fails,\n"
        "then a summary. A tensor that stores no hash passes with a warning, but\n"
        "fails under --all, which promises that every tensor was checked.\n"
        "Safetensors files store no hashes: they pass when every tensor can be\n"
        "read, and the summary says no data was checked; under --all they fail.\n"
        "FILE is a path or a URI: file://, http(s)://, s3://bucket/key or\n"
        "redis://host/prefix.\n"
        "\n"
        "Encrypted files store SHA-256 hashes of the plaintext: give the key to\n"
        "decrypt each tensor and check them (decryption also authenticates the\n"
        "data). Without a key, an encrypted tensor fails.\n"
        "\n"
        "options:\n"
        "  --all                 check every stored hash (SHA-256 too; slower); a\n"
        "                        tensor that stores none fails\n"
        "  --key-file F          decrypt with the 32-byte key in file F\n"
        "  --passphrase-env VAR  decrypt with the passphrase in $VAR\n"
        "  -h, --help            show this help\n"
        "\n") +
    kRemoteOptionsHelp +
    "\n"
    "exit status: 0 every tensor passed, 1 a tensor failed its check or the\n"
    "file cannot be read or is invalid, 2 usage error\n";

// What the summary says was checked: which hashes, on how many tensors.
std::string CheckedHashes(const Load& load, HashCheck check) {
  uint64_t crc = 0, sha = 0, none = 0;
  for (size_t i = 0; i < load.tensor_count(); ++i) {
    bool has_crc = false, has_sha = false;
    for (const StoredHash& h : load.header(i).hashes) {
      has_crc |= h.type == HashType::kCrc32;
      has_sha |= h.type == HashType::kSha256;
    }
    crc += has_crc;
    sha += has_sha && (check == HashCheck::kAll || !has_crc);
    none += !has_crc && !has_sha;
  }
  std::string out = std::to_string(crc) + " CRC32, " + std::to_string(sha) + " SHA-256";
  if (none > 0) out += "; " + std::to_string(none) + " with no stored hash";
  return out;
}

// Without --all a tensor that stores no hash passes, named on stderr.
void WarnUnhashed(const Index& index, const std::vector<size_t>& unhashed) {
  for (size_t i : unhashed) {
    std::fprintf(stderr, "tensorizer verify: warning: %s stores no hash; its data was not checked\n",
                 DisplayName(index.entries[i].name).c_str());
  }
}

int RunVerify(const std::vector<std::string>& args) {
  const Command& self = kVerifyCommand;
  int exit_code = kExitOk;
  OptionSpec spec{{"--all"}, {"--key-file", "--passphrase-env"}};
  AddRemoteOptions(&spec);
  auto parsed = ParseCommand(self, args, spec, {"FILE"}, &exit_code);
  if (!parsed) return exit_code;
  std::string usage_error;
  auto remote = RemoteOptionsFromArgs(*parsed, &usage_error);
  if (!remote) return UsageError(self, usage_error);
  const std::string& file = parsed->positional[0];
  std::optional<KeyOptionError> key_error;
  std::optional<DecryptionOptions> decryption = DecryptionFromArgs(*parsed, &key_error);
  if (key_error) return KeyOptionFailure(self, *key_error);
  auto opened = OpenTensorsFile(file, remote->source);
  if (!opened.ok()) return Failure(self, opened.status().message());
  if (opened->index->header.has_crypt_info() && !decryption) {
    return Failure(self, DisplayUri(file) +
                             " is encrypted: give --key-file or --passphrase-env to decrypt it "
                             "and check its hashes");
  }
  const HashCheck check = parsed->has("--all") ? HashCheck::kAll : HashCheck::kFast;

  LoadOptions options;
  options.verify = check;
  options.decryption = decryption;
  // One cache for the whole-file load and the per-tensor loads after it, so
  // a passphrase key is derived once per file, not once per tensor.
  if (options.decryption) options.decryption->derived_keys = std::make_shared<DerivedKeyCache>();
  std::vector<size_t> all(opened->index->entries.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  const bool safetensors = opened->index->format == FileFormat::kSafetensors;
  const std::string uri = DisplayUri(file);
  if (safetensors && check == HashCheck::kAll) {
    // --all promises that every tensor was checked: nothing here can be.
    return Failure(self, uri +
                             " is a safetensors file, which stores no hashes, so --all cannot "
                             "check its data");
  }
  Status st;
  TensorChecks checks;
  {
    auto load = Load::Start(opened->source, opened->index, all, options);
    if (!load.ok()) return Failure(self, load.status().message());
    st = (*load)->Wait();
    // Interrupted: checking each tensor again would only be cancelled too.
    if (st.code() == StatusCode::kCancelled) return Failure(self, st.message());
    if (st.ok() && safetensors) {
      // Nothing to compare with; say so rather than claim a check.
      Print(uri + ": OK: " + Plural(all.size(), "tensor") +
            " read; safetensors files store no hashes, so their data was not checked\n");
      return kExitOk;
    }
    if (st.ok()) {
      for (size_t i = 0; i < all.size(); ++i) {
        if ((*load)->header(i).hashes.empty()) checks.unhashed.push_back(i);
      }
      if (checks.unhashed.empty() || check != HashCheck::kAll) {
        WarnUnhashed(*opened->index, checks.unhashed);
        Print(uri + ": OK: " + Plural(all.size(), "tensor") + " passed (" +
              CheckedHashes(**load, check) + ")\n");
        return kExitOk;
      }
    }
  }

  if (!st.ok()) checks = CheckEachTensor(*opened, options);
  std::vector<TensorFailure> failures = std::move(checks.failures);
  if (check != HashCheck::kAll) {
    WarnUnhashed(*opened->index, checks.unhashed);
  } else {
    // Under --all a tensor that stores no hash fails: its data went unchecked.
    for (size_t i : checks.unhashed) {
      failures.push_back({i, Status::FormatError("stores no hash, so --all cannot check its data")});
    }
    std::sort(failures.begin(), failures.end(),
              [](const TensorFailure& a, const TensorFailure& b) { return a.entry < b.entry; });
  }
  for (const TensorFailure& f : failures) {
    Print("FAILED " + DisplayName(opened->index->entries[f.entry].name) + ": " +
          f.status.message() + "\n");
  }
  if (failures.empty()) {
    // Every tensor passed on its own: the failure was not one tensor's.
    Print("FAILED: " + st.message() + "\n");
  }
  Print(uri + ": FAILED: " + std::to_string(failures.size()) + " of " +
        Plural(all.size(), "tensor") + " failed\n");
  return kExitFailed;
}

}  // namespace

const Command kVerifyCommand = {"verify", "check the stored hashes of every tensor", kHelp.c_str(),
                                RunVerify};

}  // namespace tensorizer::cli
