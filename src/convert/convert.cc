// ConvertFile: see include/tensorizer/convert.h for the contract.
//
// Steps: (1) read the input's index and decide every output tensor's name,
// dtype and place before anything is written, so a tensor the output format
// cannot hold fails the conversion before a byte of output exists; (2) cut
// the tensors, taken in the order of their data in the output, into batches
// of consecutive tensors of at most `batch_bytes`; (3) load batch k+1 while
// batch k is written: .tensors output through the Writer (which lays records
// out in the order it is given them, so batching does not change a byte),
// safetensors output by positional writes at the offsets the header fixed;
// (4) commit: rename the temporary file over the destination, or complete
// the S3 multipart upload. Any error before (4) abandons the output (the
// temporary file is removed, the upload aborted).
//
// Invariants: at most two batches are loaded at once; the output is written
// front to back, batch by batch, each byte once. Batches follow the output's
// order rather than the input's (safetensors output sorts tensors by dtype)
// because an S3 sink sends a part only once all its bytes have arrived:
// scattered writes would keep most of the file in memory.
#include "tensorizer/convert.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "tensorizer/load.h"
#include "tensorizer/source.h"
#include "tensorizer/write.h"

namespace tensorizer {

namespace {

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix.data(), suffix.size()) == 0;
}

FileFormat OutputFormat(ConvertTo to, const std::string& dest, FileFormat input) {
  switch (to) {
    case ConvertTo::kTensors:
      return FileFormat::kTensorizer;
    case ConvertTo::kSafetensors:
      return FileFormat::kSafetensors;
    case ConvertTo::kAuto:
      break;
  }
  if (EndsWith(dest, ".safetensors")) return FileFormat::kSafetensors;
  if (EndsWith(dest, ".tensors")) return FileFormat::kTensorizer;
  return input == FileFormat::kTensorizer ? FileFormat::kSafetensors : FileFormat::kTensorizer;
}

// A safetensors key as a .tensors name: stored as its UTF-8 bytes, so it
// must not look like a path (0x1E first) or be empty, which tensorizer
// cannot read back.
Status CheckPlainName(const std::string& name) {
  if (name.empty()) {
    return Status::InvalidArgument(
        "a tensor with an empty name cannot be stored in a .tensors file");
  }
  if (name[0] == '\x1e') {
    return Status::InvalidArgument(
        "tensor name starting with byte 0x1E would read as a path in "
        "a .tensors file");
  }
  return Status::Ok();
}

// Forwards to a sink and remembers the end of the furthest write: the output
// file's size, which for an S3 object cannot be asked of a filesystem.
class MeasuredSink final : public Sink {
 public:
  MeasuredSink(std::unique_ptr<Sink> inner, std::atomic<uint64_t>* end)
      : inner_(std::move(inner)), end_(end) {}
  Status WriteAt(uint64_t offset, const void* data, uint64_t length) override {
    Status st = inner_->WriteAt(offset, data, length);
    uint64_t e = offset + length, seen = end_->load();
    while (st.ok() && e > seen && !end_->compare_exchange_weak(seen, e)) {
    }
    return st;
  }
  void Preallocate(uint64_t offset, uint64_t length) override {
    inner_->Preallocate(offset, length);
  }
  Status Commit() override { return inner_->Commit(); }
  void Abort() override { inner_->Abort(); }
  const std::string& uri() const override { return inner_->uri(); }
  bool writes_once() const override { return inner_->writes_once(); }

 private:
  std::unique_ptr<Sink> inner_;
  std::atomic<uint64_t>* end_;
};

}  // namespace

Result<ConvertResult> ConvertFile(const std::string& source_uri, const std::string& dest_uri,
                                  const ConvertOptions& options) {
  const std::string& dest = dest_uri;
  TZR_ASSIGN_OR_RETURN(std::unique_ptr<Source> opened, OpenSource(source_uri, options.source));
  std::shared_ptr<const Source> source = std::move(opened);
  TZR_ASSIGN_OR_RETURN(Index parsed, ReadIndex(*source));
  auto index = std::make_shared<const Index>(std::move(parsed));
  const std::vector<TensorEntry>& entries = index->entries;
  const size_t n = entries.size();

  ConvertResult result;
  result.input_format = index->format;
  result.output_format = OutputFormat(options.to, dest, index->format);
  const bool to_safetensors = result.output_format == FileFormat::kSafetensors;
  const bool encrypted_input =
      index->format == FileFormat::kTensorizer && index->header.has_crypt_info();
  if (options.encryption && to_safetensors) {
    return Status::InvalidArgument(
        "safetensors files cannot be encrypted; encryption needs "
        ".tensors output");
  }
  if (options.decryption && !encrypted_input) {
    return Status::InvalidArgument(source->uri() +
                                   " is not encrypted, but a key or passphrase was given");
  }
  if (encrypted_input && !options.decryption) {
    return Status::Cryptography(source->uri() +
                                " is encrypted: converting it needs its key or passphrase");
  }
  if (options.batch_bytes == 0) return Status::InvalidArgument("batch_bytes must be positive");

  // (1) Every output tensor's name and place, before anything is written.
  std::vector<uint64_t> load_bytes(n);
  std::vector<bool> meta(n);
  for (size_t i = 0; i < n; ++i) {
    auto bytes = ExpectedDataLength(entries[i]);
    auto is_meta = IsMetaTensor(entries[i]);
    if (!bytes.ok()) return bytes.status().WithContext(source->uri());
    if (!is_meta.ok()) return is_meta.status().WithContext(source->uri());
    load_bytes[i] = *bytes;
    meta[i] = *is_meta;
    result.meta_tensors += meta[i];
  }
  // Taken from the one parse of the header: re-reading it could see other
  // bytes than those the index was checked against.
  const std::optional<std::map<std::string, std::string>>& metadata = index->safetensors_metadata;
  SafetensorsLayout layout;
  if (to_safetensors) {
    std::vector<SafetensorsTensor> tensors(n);
    for (size_t i = 0; i < n; ++i) {
      auto key = SafetensorsKey(entries[i].name);
      if (!key.ok()) return key.status().WithContext(source->uri());
      tensors[i] = {std::move(key).value(), entries[i].dtype, entries[i].shape};
    }
    auto encoded = EncodeSafetensorsHeader(tensors, metadata);
    if (!encoded.ok()) return encoded.status().WithContext("converting " + source->uri());
    layout = std::move(encoded).value();
  } else {
    if (metadata && !metadata->empty()) {
      result.dropped_metadata = true;
      result.dropped_metadata_entries = metadata->size();
    }
    if (index->format == FileFormat::kSafetensors) {
      for (const TensorEntry& e : entries) {
        Status st = CheckPlainName(e.name);
        if (!st.ok()) return st.WithContext(source->uri() + ": tensor '" + e.name + "'");
      }
    }
  }

  // (2) Batches of tensors consecutive in the output, each in input order
  // (Load::Start takes increasing entry indices).
  std::vector<size_t> output_order = layout.order;
  if (!to_safetensors) {
    output_order.resize(n);
    for (size_t i = 0; i < n; ++i) output_order[i] = i;
  }
  std::vector<std::vector<size_t>> batches;
  uint64_t batch_total = 0;
  for (size_t i : output_order) {
    const bool fits =
        batch_total <= options.batch_bytes && load_bytes[i] <= options.batch_bytes - batch_total;
    if (batches.empty() || !fits) {
      batches.emplace_back();
      batch_total = 0;
    }
    batches.back().push_back(i);
    batch_total += load_bytes[i];
  }
  for (std::vector<size_t>& batch : batches) std::sort(batch.begin(), batch.end());
  result.batches = batches.size();

  // (3) Load batch k+1 while batch k is written.
  std::atomic<uint64_t> written_end{0};
  TZR_ASSIGN_OR_RETURN(std::unique_ptr<Sink> opened_sink, CreateSink(dest, options.sink));
  std::unique_ptr<Sink> sink = std::make_unique<MeasuredSink>(std::move(opened_sink), &written_end);
  Sink* raw_sink = sink.get();
  std::unique_ptr<Writer> writer;
  if (to_safetensors) {
    raw_sink->Preallocate(0, layout.file_size);
    Status st = raw_sink->WriteAt(0, layout.header.data(), layout.header.size());
    if (!st.ok()) {
      raw_sink->Abort();
      return st;
    }
  } else {
    WriterOptions wo;
    wo.num_threads = options.num_threads;
    wo.encryption = options.encryption;
    TZR_ASSIGN_OR_RETURN(writer, Writer::Create(std::move(sink), wo));
  }
  // From here on, returning early abandons the output: `sink` and `writer`
  // abort in their destructors unless committed.

  LoadOptions lo;
  lo.num_threads = options.num_threads;
  lo.verify = index->format == FileFormat::kTensorizer ? options.verify : HashCheck::kNone;
  if (encrypted_input) lo.decryption = options.decryption;
  auto start = [&](size_t b) { return Load::Start(source, index, batches[b], lo); };

  std::unique_ptr<Load> current;
  if (!batches.empty()) {
    TZR_ASSIGN_OR_RETURN(current, start(0));
  }
  for (size_t b = 0; b < batches.size(); ++b) {
    std::unique_ptr<Load> next;
    if (b + 1 < batches.size()) {
      TZR_ASSIGN_OR_RETURN(next, start(b + 1));
    }
    TZR_RETURN_IF_ERROR(current->Wait());
    const Load& load = *current;
    const uint8_t* arena = load.arena()->data();
    if (to_safetensors) {
      for (size_t k = 0; k < load.tensor_count(); ++k) {
        const size_t i = batches[b][k];
        TZR_RETURN_IF_ERROR(raw_sink->WriteAt(layout.data_offsets[i], arena + load.arena_offset(k),
                                              layout.data_lengths[i]));
        result.data_bytes += layout.data_lengths[i];
      }
    } else {
      std::vector<TensorWrite> writes(load.tensor_count());
      for (size_t k = 0; k < writes.size(); ++k) {
        const size_t i = batches[b][k];
        const TensorEntry& e = entries[i];
        TensorWrite& w = writes[k];
        w.name = e.name;
        w.dtype = e.dtype;
        w.shape = e.shape;
        w.meta = meta[i];
        w.data = arena + load.arena_offset(k);
        w.data_length = meta[i] ? 0 : e.data_length;
        if (index->format == FileFormat::kTensorizer) {
          w.type = e.type;
          w.module_idx = load.header(k).module_idx;
        } else {
          w.type = TensorType::kStateDict;
          w.module_idx = 0;
        }
        result.data_bytes += w.data_length;
      }
      TZR_RETURN_IF_ERROR(writer->Write(writes));
    }
    current = std::move(next);
  }
  result.tensor_count = n;

  // (4) Commit.
  if (to_safetensors) {
    TZR_RETURN_IF_ERROR(raw_sink->Commit());
    result.file_size = layout.file_size;
  } else {
    TZR_RETURN_IF_ERROR(writer->Close());
    result.output_version = writer->version();
    result.file_size = written_end.load();
  }
  return result;
}

}  // namespace tensorizer
