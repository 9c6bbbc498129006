/* ps2_setup: the i8042 for polling, as the input test guests use it: configuration byte
 * 0x44 (system flag + translation, no interrupts, both ports on), mouse port enabled,
 * mouse data reporting on (the mouse answers ACK 0xfa). */
	.text
ps2_setup:
	mov $0x60, %al
	out %al, $0x64
	mov $0x44, %al
	out %al, $0x60
	mov $0xa8, %al
	out %al, $0x64
	mov $0xd4, %al
	out %al, $0x64
	mov $0xf4, %al
	out %al, $0x60
	ret
