// y[i] = a * x[i] + y[i] for i < n, one fused multiply-add (the SPIR-V twin of tf_saxpy_f32 in
// ../tf_kernels.ptx). Arguments as in tf_vector_add_f32.comp.
#version 460
#extension GL_EXT_buffer_reference : require
layout(local_size_x_id = 0, local_size_y_id = 1, local_size_z_id = 2) in;
layout(buffer_reference, std430, buffer_reference_align = 4) buffer F32s { float v[]; };
layout(push_constant, std430) uniform Args { uint n; float a; F32s x; F32s y; } args;
void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i < args.n) {
        args.y.v[i] = fma(args.a, args.x.v[i], args.y.v[i]);
    }
}
