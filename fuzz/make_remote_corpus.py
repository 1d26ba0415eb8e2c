#!/usr/bin/env python3
"""Writes the seed corpora of the remote-protocol fuzz targets:
fuzz/corpus_http_response/, fuzz/corpus_redis_reply/, fuzz/corpus_s3_config/.
The input format of each is described at the top of its fuzz/fuzz_*.cc.

Usage: python3 fuzz/make_remote_corpus.py            (from the repository root)
"""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
RS = b"\x1e"  # fuzz_s3_config's field separator


def http_seeds():
    yield "range_206", (
        b"bytes 0-99/1000\n"
        b"HTTP/1.1 206 Partial Content\r\n"
        b"Content-Range: bytes 0-0/12345\r\n"
        b'ETag: "abc"\r\n'
        b"Last-Modified: Tue, 01 Jan 2030 00:00:00 GMT\r\n"
        b"Content-Length: 1\r\n\r\n"
    )
    yield "redirect_then_200", (
        b"bytes */1000\n"
        b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n"
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/2 200\r\ncontent-length: 77\r\netag: W/\"weak\"\r\n\r\n"
    )
    yield "retry_503", (
        b"5\n"
        b"HTTP/1.1 503 Slow Down\r\nRetry-After: 120\r\nContent-Length: 20\r\n\r\n"
    )
    yield "unknown_total", b"bytes 5-9/*\nHTTP/1.0 416 Range Not Satisfiable\r\nContent-Range: bytes */0\r\n"


def redis_seeds():
    # Mode 0 (first byte % 3 == 0): replies read with ReadValue.
    yield "values_scan", b"\x00" + (
        b"*2\r\n$1\r\n0\r\n*3\r\n$10\r\np:header:0\r\n$8\r\np:a:1024\r\n$7\r\np:b:999\r\n"
        b":1024\r\n:0\r\n:-1\r\n+OK\r\n-LOADING Redis is loading\r\n$-1\r\n*-1\r\n*0\r\n$0\r\n\r\n"
    )
    yield "values_nested", b"\x03*1\r\n*1\r\n*2\r\n:5\r\n$3\r\nabc\r\n"
    # Mode 1: ReadBulkInto, length 11, buffers split by 0x5b.
    yield "bulk_into", b"\x01\x0b\x5b$11\r\nhello world\r\n$11\r\nHELLO WORLD\r\n$3\r\nabc\r\n"
    yield "bulk_error", b"\x01\x04\x00-BUSY script\r\n"
    # Mode 2: a prefix, keys with lengths, reads.
    yield "extents", (
        b"\x02model\n"
        b"model:header:0\t100\n"
        b"model:w:100\t40\n"
        b"model:w:140\t0\n"
        b"model:b:140\t60\n"
        b"other:x:0\t5\n"
        b"model:bad:1x\t3\n"
        b"?0 200\n?99 2\n?150 50\n?0 0\n?190 20\n"
    )
    yield "extents_gap", b"\x05p:a:b\np:a:b:0\t10\np:c:20\t10\n?5 20\n?25 5\n?18446744073709551615 1\n"
    yield "extents_overlap", b"\x08p\np:a:0\t10\np:b:5\t10\n?0 1\n"


def s3_seeds():
    s3cfg = (
        b"[default]\naccess_key = AKIDS3CFG\nsecret_key = s3cfgSECRETvalue123\n"
        b"host_base = object.example.com:8443\nuse_https = True\nbucket_location = US\n"
    )
    creds = (
        b"[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = defaultSECRET456\n"
        b"[dev]\naws_access_key_id = AKIDDEV\naws_secret_access_key = devSECRET789\n"
        b"aws_session_token = devTOKENabc\n"
    )
    config = (
        b"[default]\nregion = eu-west-1\n[profile dev]\nregion = us-west-2\ns3 =\n"
        b"  endpoint_url = http://localhost:9000\n  addressing_style = path\n"
    )
    xml = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
    yield "s3cfg_only", RS.join([s3cfg, b"", b"", b"", b"", b"s3://bucket/key", xml, b"Code"])
    yield "aws_profile", RS.join(
        [b"", creds, config, b"AWS_PROFILE=dev", b"", b"s3://my.bucket//a/b?c#d", xml, b"Message"]
    )
    yield "env_creds", RS.join(
        [
            b"",
            b"",
            b"",
            b"AWS_ACCESS_KEY_ID=AKIDENV\nAWS_SECRET_ACCESS_KEY=envSECRET\n"
            b"AWS_SESSION_TOKEN=envTOKEN\nAWS_ENDPOINT_URL=https://s3.us-east-2.amazonaws.com/",
            b"",
            b"S3://Bucket_Name/k",
        ]
    )
    yield "explicit", RS.join(
        [
            s3cfg,
            creds,
            config,
            b"AWS_REGION=ap-south-1",
            b"id=AKIDX\nsecret=explicitSECRET\ntoken=explicitTOKEN\nendpoint=[::1]:9000\n"
            b"force_http=1\naddressing=virtual\nprofile=dev",
            b"s3://b/k",
        ]
    )
    yield "half_pair", RS.join([s3cfg, b"", b"", b"", b"id=AKIDHALF\ns3cfg=~/other.s3cfg", b"s3://b/k"])
    yield "bad_files", RS.join(
        [
            b"[default]\nuse_https = maybe\nsecret_key = x\n",
            b"key before section\n",
            b"[profile p]\ns3 =\n  addressing_style = sideways\n",
            b"AWS_CONFIG_FILE=/unreadable",
            b"home=",
        ]
    )


def write(dirname, seeds):
    d = os.path.join(HERE, dirname)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds:
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        print(f"{len(data):6d}  {dirname}/{name}")


def main():
    write("corpus_http_response", http_seeds())
    write("corpus_redis_reply", redis_seeds())
    write("corpus_s3_config", s3_seeds())


if __name__ == "__main__":
    main()
