using System.Text;

namespace FastAttention.PeerBenchmarks;

/// <summary>
/// The ONNX model of one <c>com.microsoft</c> <c>MultiHeadAttention</c> node (query, key and value
/// <c>[1, n, h*d]</c>, output <c>[1, n, h*d]</c>, <c>num_heads = h</c>, <c>unidirectional = 1</c> when causal),
/// written as protobuf bytes by hand so the peer needs no Python: ModelProto (ir_version 8, opsets "" 17 and
/// com.microsoft 1) holding a GraphProto with the node and the three inputs' and the output's value infos.
/// </summary>
internal static class OnnxAttentionModel
{
    public static byte[] MultiHeadAttention(int n, int heads, int d, bool causal)
    {
        long[] shape = [1, n, (long)heads * d];
        var node = new Proto()
            .String(1, "query").String(1, "key").String(1, "value")
            .String(2, "output")
            .String(3, "attention")
            .String(4, "MultiHeadAttention")
            .Message(5, IntAttribute("num_heads", heads))
            .Message(5, IntAttribute("unidirectional", causal ? 1 : 0))
            .String(7, "com.microsoft");
        var graph = new Proto().Message(1, node).String(2, "mha");
        foreach (string input in new[] { "query", "key", "value" })
        {
            graph.Message(11, FloatTensor(input, shape));
        }

        graph.Message(12, FloatTensor("output", shape));
        return new Proto()
            .Varint(1, 8)                                           // ir_version
            .String(2, "FastAttention.PeerBenchmarks")              // producer_name
            .Message(7, graph)
            .Message(8, new Proto().String(1, "").Varint(2, 17))    // opset_import: the default domain
            .Message(8, new Proto().String(1, "com.microsoft").Varint(2, 1))
            .ToArray();
    }

    // AttributeProto: name = 1, i = 3, type = 20 (INT = 2).
    private static Proto IntAttribute(string name, long value) => new Proto().String(1, name).Varint(3, value).Varint(20, 2);

    // ValueInfoProto { name = 1, type = 2: TypeProto { tensor_type = 1: { elem_type = 1 (FLOAT), shape = 2: { dim = 1: { dim_value = 1 } } } } }.
    private static Proto FloatTensor(string name, long[] dims)
    {
        var shape = new Proto();
        foreach (long dim in dims)
        {
            shape.Message(1, new Proto().Varint(1, dim));
        }

        return new Proto().String(1, name).Message(2, new Proto().Message(1, new Proto().Varint(1, 1).Message(2, shape)));
    }

    /// <summary>A protobuf message being written: varint and length-delimited fields only, which is all ONNX needs here.</summary>
    private sealed class Proto
    {
        private readonly MemoryStream _bytes = new();

        public Proto Varint(int field, long value)
        {
            WriteVarint((ulong)field << 3);
            WriteVarint((ulong)value);
            return this;
        }

        public Proto String(int field, string value) => Bytes(field, Encoding.UTF8.GetBytes(value));

        public Proto Message(int field, Proto message) => Bytes(field, message.ToArray());

        public byte[] ToArray() => _bytes.ToArray();

        private Proto Bytes(int field, byte[] value)
        {
            WriteVarint(((ulong)field << 3) | 2);
            WriteVarint((ulong)value.Length);
            _bytes.Write(value);
            return this;
        }

        private void WriteVarint(ulong value)
        {
            while (value >= 0x80)
            {
                _bytes.WriteByte((byte)(value | 0x80));
                value >>= 7;
            }

            _bytes.WriteByte((byte)value);
        }
    }
}
