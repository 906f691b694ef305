"""Writes a tokenizer-only GGUF: every metadata key of a model's GGUF (tokenizer, chat template, architecture and
context length), no tensors. `cleave worker/router --model synthetic:<shape>` serve with it when
CLEAVE_SYNTHETIC_TOKENIZER names it, on machines without the model cache.

    python3 scripts/tokenizer_gguf.py MODEL.gguf OUT.gguf     # needs the `gguf` package (pip install gguf)
"""
import sys

import gguf


def main(src_path: str, out_path: str) -> None:
    src = gguf.GGUFReader(src_path)
    arch = src.fields["general.architecture"]
    writer = gguf.GGUFWriter(out_path, bytes(arch.parts[arch.data[0]]).decode())
    for name, field in src.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            if field.types[1] == gguf.GGUFValueType.STRING:
                values = [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data]
            else:
                values = [field.parts[i].tolist()[0] for i in field.data]
            writer.add_array(name, values)
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_string(name, bytes(field.parts[field.data[0]]).decode())
        else:
            writer.add_key_value(name, field.parts[field.data[0]].tolist()[0], kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
